"""Modbus amplifiers: register-map profiles, decoder, probe and simulator.

- ``profile``: the TOML register-map format, ``load_profile``, ``ProfileError``.
- ``codec``: pure ``decode`` (words -> AmpState + named values) and ``encode``.
- ``probe``: ``AmpProbe`` (Probe[AmpReading]) over a ``ModbusBus`` (TCP or RTU)
  or straight over a simulator engine (``EngineBus``).
- ``engine``: the simulated amplifier without I/O; ``sim``: ``loa-sim amp``.
"""
