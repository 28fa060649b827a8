"""Recovery synthesis: units of work and their seeds (``units``), the optimisation of a group of units
(``engine``), and per-dataset hyper-parameter presets (``presets``)."""
