"""Chunking, the object store, repositories, and pack/delta build and read."""
