"""The configs of the paper's runs (ml_collections), and what every config shares.

    python train.py --config configs/digits.py --workdir /tmp/zf    # a file of this package

`ConfigError` is a config that cannot run; `from_dict` rebuilds a config saved as JSON.
Each config file's `get_config()` gives the paper's values; the command lines take
`--config.FIELD=VALUE` overrides.
"""

import ml_collections


class ConfigError(ValueError):
  """A config that cannot run (unknown model, batch size that does not split, ...)."""


def from_dict(values: dict) -> ml_collections.ConfigDict:
  """A locked ConfigDict from JSON values; lists become tuples as in the config files."""
  def tuples(value):
    if isinstance(value, list):
      return tuple(tuples(v) for v in value)
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    return value
  config = ml_collections.ConfigDict(tuples(values))
  config.lock()
  return config
