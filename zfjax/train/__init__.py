"""The training layer: the paper's training loop, ensembles of trained nets, transfer learning.

    from zfjax import train
    results = train.train_and_evaluate(config, workdir)       # what zfjax-train runs
    from zfjax.train import ensemble, transfer                # Table 2; Tables 4-7

Modules: `loop` (train_and_evaluate), `train_state` (TrainState, optimizer, plateau,
filter clipping), `steps` (train and eval steps), `fields` (config checks), `logs`
(metrics.jsonl, TensorBoard, progress), `faults` (workdir lock, SIGTERM, errors),
`ensemble`, and transfer's `transfer`, `transfer_data`, `probes`, `finetune`.
The command lines are zfjax-train, zfjax-ensemble and zfjax-transfer (`zfjax.cli`).
"""

from zfjax.train.faults import NonFiniteLossError
from zfjax.train.faults import Preempted
from zfjax.train.faults import WorkdirBusyError
from zfjax.train.faults import WorkdirWriteError
from zfjax.train.fields import check_config
from zfjax.train.loop import train_and_evaluate
from zfjax.train.steps import evaluate
from zfjax.train.steps import evaluate_ensemble
from zfjax.train.steps import make_eval_step
from zfjax.train.steps import make_train_step
from zfjax.train.train_state import TrainState
from zfjax.train.train_state import create_optimizer
from zfjax.train.train_state import create_train_state
from zfjax.train.train_state import renormalize_filters

__all__ = [
    'NonFiniteLossError', 'Preempted', 'TrainState', 'WorkdirBusyError', 'WorkdirWriteError',
    'check_config', 'create_optimizer', 'create_train_state', 'evaluate', 'evaluate_ensemble',
    'make_eval_step', 'make_train_step', 'renormalize_filters', 'train_and_evaluate',
]
