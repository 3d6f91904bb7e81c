from hybrid_pipeline.serving.server import main

main()
