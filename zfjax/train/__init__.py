"""The training layer: the paper's training loop, ensembles of trained nets, transfer learning.

    from zfjax import train
    results = train.train_and_evaluate(config, workdir)       # what zfjax-train runs
    from zfjax.train import ensemble, transfer                # Table 2; Tables 4-7

Modules: `loop` (train_and_evaluate), `train_state` (TrainState, optimizer, plateau,
filter clipping), `steps` (train and eval steps), `fields` (config checks), `logs`
(metrics.jsonl, TensorBoard, progress), `faults` (workdir lock, SIGTERM, errors),
`ensemble`, and transfer's `transfer`, `transfer_data`, `probes`, `finetune`.
The command lines are zfjax-train, zfjax-ensemble and zfjax-transfer (`zfjax.cli`). The
names here load their module on first use, so the package imports none of its modules
(they import each other without a circle through it).
"""

from zfjax import lazy_names

_HOMES = {'NonFiniteLossError': 'faults', 'Preempted': 'faults', 'WorkdirBusyError': 'faults',
          'WorkdirWriteError': 'faults', 'check_config': 'fields',
          'train_and_evaluate': 'loop', 'evaluate': 'steps', 'evaluate_ensemble': 'steps',
          'make_eval_step': 'steps', 'make_train_step': 'steps', 'TrainState': 'train_state',
          'create_optimizer': 'train_state', 'create_train_state': 'train_state',
          'renormalize_filters': 'train_state'}
__all__ = sorted(_HOMES)

__getattr__, __dir__ = lazy_names.exports(__name__, _HOMES)
