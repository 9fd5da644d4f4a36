"""`bank bench`: end-to-end throughput and latency of the transfer engine."""
