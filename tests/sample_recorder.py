"""`bert-pretrain` with a record of the training samples each rank's sampler hands out (tests).

    python tests/sample_recorder.py <bert-pretrain overrides>            # or under torchrun

Every key (epoch, index) that `TrainStreamSampler` yields is appended, as it is yielded, to
`$SAMPLE_LOG_DIR/$SAMPLE_LOG_LAUNCH-rank<r>.jsonl`. The real sampler and training run unchanged;
this only observes the iterator. Lightning fetches one micro-batch ahead, so the samples trained on
are the first steps × global_batch_size / world_size keys of a launch's record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from pretrain import data
from pretrain.train import main

_sampler_iter = data.TrainStreamSampler.__iter__


def _recording_iter(self: data.TrainStreamSampler) -> Iterator[data.SampleKey]:
    log = Path(os.environ["SAMPLE_LOG_DIR"]) / (
        f"{os.environ['SAMPLE_LOG_LAUNCH']}-rank{self.rank}.jsonl"
    )
    with open(log, "a", encoding="utf-8") as f:
        for key in _sampler_iter(self):
            f.write(json.dumps(list(key)) + "\n")
            f.flush()
            yield key


data.TrainStreamSampler.__iter__ = _recording_iter

if __name__ == "__main__":
    main()
