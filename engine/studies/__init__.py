"""Studies built on the Engine facade: experiments (sweeps over a grid of cells) and the benchmark."""
