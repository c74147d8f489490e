"""`python -m feat`: the `feat` command, also where no console script is on the PATH, and under
`torchrun ... -m feat finetune ...` (one process per GPU)."""

from feat.cli import app

if __name__ == "__main__":
    app(prog_name="feat")
