"""Datasets: acquisition, parsing, the leave-one-out protocol and the processed files."""

from .pipeline import SPLITS, build_tables, leave_one_out_split, prepare_dataset, processed_dir, sample_candidates
from .popularity_matched import matched_inputs, popularity_check
from .processed import ProcessedData, load_processed
from .sources import CsvDataset, DatasetSource, MovieLens100K, RawDataset, get_source
from .titles import display_title, front_article, parse_movielens_title

__all__ = [
    "SPLITS",
    "CsvDataset",
    "DatasetSource",
    "MovieLens100K",
    "ProcessedData",
    "RawDataset",
    "build_tables",
    "display_title",
    "front_article",
    "get_source",
    "leave_one_out_split",
    "load_processed",
    "matched_inputs",
    "parse_movielens_title",
    "popularity_check",
    "prepare_dataset",
    "processed_dir",
    "sample_candidates",
]
