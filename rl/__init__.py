"""Adapters that plug :class:`mmrm.rl.reward_fn.RewardFn` into RL stacks.

* :mod:`mmrm.rl.trl` -- TRL ``GRPOTrainer(reward_funcs=...)``.
* :mod:`mmrm.rl.verl` -- verl ``custom_reward_function`` (``compute_score``, sync, async
  and batched) and verl's reward-model path through the service's ``/classify``.
* :mod:`mmrm.rl.openrlhf` -- OpenRLHF ``--reward.remote_url`` against the service's
  ``/get_reward``: the payload, the ``images`` extension, and how to size the service.

None of them imports its framework: each matches the framework's call signature, so mmrm installs
beside any version of it (the commits matched are named in each module and its tests).
"""
