"""Run directories: what a trained encoder (or an ensemble of them) is on disk, and opening one.

layout            the name of every file a run holds; reading metrics.json and per-vertex arrays
configs           config.json (RunConfig, TrainConfig) and ensemble.json (EnsembleConfig)
run               an opened run (Run): the encoder rebuilt and checked against the data; safetensors weights
ensembles         ensembles of runs: the ensemble encoder, stacked features, members
ensemble_weights  per-vertex member weights and the cross-fitted validation r
opening           open_run: a run or an ensemble; open_runs: several runs as one ensemble
predictions       predicting from features; saving and loading predictions of any images
manifest          manifest.json: what produced a run or a report
environment       environment.yml and requirements.txt from a manifest

This package exports what the rest of the suite uses; the parts are imported
from their modules.
"""
from .configs import EnsembleConfig, RunConfig, TrainConfig, read_config, write_config
from .ensemble_weights import (DEFAULT_TEMPERATURE, HALVES_SEED, WEIGHTINGS, check_weighting, combine, cross_fit,
                               validation_halves)
from .ensembles import Member, check_members
from .environment import FORMATS, write_environment, write_environments
from .layout import (BEST_LAYER, BEST_MEMBER, CHECKPOINT, CONFIG, ENSEMBLE, ENSEMBLE_WEIGHTS, LOCK, MANIFEST, METRICS,
                     PRED_TEST, RESULT_FILES, RUN_FILES, TEST_SCORES, VAL_CORR, VAL_CORR_IN_SAMPLE, VAL_INDICES,
                     VAL_PRED, WEIGHTS, expand_subjects, load_run_array, read_metrics)
from .manifest import (data_fingerprint, read_manifest, record_command, report_manifest, software_manifest,
                       write_run_manifest)
from .opening import open_run, open_runs
from .predictions import check_prediction_path, iter_batches, predict, save_predictions, vertex_coordinates
from .run import Run, check_trained_on, load_weights, save_weights

__all__ = ["BEST_LAYER", "BEST_MEMBER", "CHECKPOINT", "CONFIG", "DEFAULT_TEMPERATURE", "ENSEMBLE", "ENSEMBLE_WEIGHTS",
           "FORMATS", "HALVES_SEED", "LOCK", "MANIFEST", "METRICS", "PRED_TEST", "RESULT_FILES", "RUN_FILES",
           "TEST_SCORES", "VAL_CORR", "VAL_CORR_IN_SAMPLE", "VAL_INDICES", "VAL_PRED", "WEIGHTINGS", "WEIGHTS",
           "EnsembleConfig", "Member", "Run", "RunConfig", "TrainConfig", "check_members",
           "check_prediction_path", "check_trained_on", "check_weighting", "combine", "cross_fit", "data_fingerprint",
           "expand_subjects", "iter_batches", "load_run_array", "load_weights", "open_run", "open_runs", "predict",
           "read_config", "read_manifest", "read_metrics", "record_command", "report_manifest", "save_predictions",
           "save_weights", "software_manifest", "validation_halves", "vertex_coordinates", "write_config",
           "write_environment", "write_environments", "write_run_manifest"]
