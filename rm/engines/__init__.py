"""The engines a :class:`~mmrm.rm.reward_model.RewardModel` runs its backbone on (see :mod:`.base`)."""
