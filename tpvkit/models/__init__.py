"""Models: backbone, FPN neck, TPV encoder, aggregator/head and losses."""
