"""FAISS-backed vector index for semantic search: build, add, search, save, load."""
from polymodal.index.storage import IndexLoadError
from polymodal.index.vector_index import SearchHit, VectorIndex, default_nlist

__all__ = ["IndexLoadError", "SearchHit", "VectorIndex", "default_nlist"]
