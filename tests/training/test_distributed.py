"""Distributed.check_config: what the number of processes refuses, before anything starts."""
from __future__ import annotations

import pytest

from training.config import TrainConfig
from training.distributed import Distributed
from utils.errors import ConfigError


@pytest.mark.parametrize("settings, named", [({"accum_steps": 2}, "--accum-steps"), ({"lp_epochs": 1}, "--lp-epochs"),
                                             ({"batch_size": 3}, "--batch-size 3")])
def test_under_torchrun_one_process_methods_and_uneven_batches_are_refused(settings, named):
    cfg = TrainConfig(data_dir="x", **{"batch_size": 4, **settings})
    with pytest.raises(ConfigError, match=named):
        Distributed(0, 2, 0).check_config(cfg)
    Distributed().check_config(cfg)  # one process: all of them are fine
