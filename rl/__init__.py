"""Adapters that plug :class:`mmrm.rl.reward_fn.RewardFn` into RL stacks.

* :mod:`mmrm.rl.trl` -- TRL ``GRPOTrainer(reward_funcs=...)`` (checked on TRL 1.16.0).
* :mod:`mmrm.rl.verl_manager` -- a verl reward manager (``reward.reward_manager.source=importlib``):
  images from the batch, GRPO groups through ``/v1/rank`` (checked on verl 0.9.1).
* :mod:`mmrm.rl.verl` -- verl ``custom_reward_function`` (``compute_score``, sync and async), and
  where verl's reward-model path stands (checked on verl 0.9.1).
* :mod:`mmrm.rl.openrlhf` -- OpenRLHF ``--reward.remote_url`` against the service's
  ``/get_reward``: the payload, the ``images`` extension, and how to size the service; and
  :mod:`mmrm.rl.openrlhf_agent`, an executor for ``--train.agent_func_path`` whose reward request
  carries the rollout's images (checked on OpenRLHF 0.11.2).
* :mod:`mmrm.rl.group_batcher` -- concurrent per-sample calls coalesced into group calls.

Only :mod:`~mmrm.rl.verl_manager` and :mod:`~mmrm.rl.openrlhf_agent` import their framework (they
subclass its classes and are loaded by it); the others match the framework's call signature, so
mmrm installs beside any version of it. Each module names the release it was checked on, and the
tests run that release's own code.
"""
