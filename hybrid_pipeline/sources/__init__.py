"""Where data comes from: the landing zone, the synthetic generator and the event stream."""
