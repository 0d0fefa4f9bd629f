"""Attacks that try to bring an erased concept back: one module each, exposing ``ATTACK``.

Found by name like methods (``bench.api.attack.attack_registry``); outside packages add
attacks through the ``erasebench.attacks`` entry-point group.
"""
