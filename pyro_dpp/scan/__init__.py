"""The scan engine (DESIGN §5): the thinning step, the drivers and the generic checkpointed path.

- :mod:`pyro_dpp.scan.generic`: the checkpointed thinning scan for any intensity that implements the
  scan interface (``initial_state`` / ``log_rates`` / ``update``), and the thinning step the
  reference loop shares;
- :mod:`pyro_dpp.scan.generic_scoring`: log-likelihoods and DPP densities of any such intensity as a
  checkpointed scan over the events (linear in events, no pairwise history).
"""
