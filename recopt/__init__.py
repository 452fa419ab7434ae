"""recopt: reproducible offline tuning and evaluation of a hybrid movie recommender."""
