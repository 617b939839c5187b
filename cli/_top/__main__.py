"""``python -m distillmark`` runs the command-line interface."""

from distillmark.cli.main import main

if __name__ == "__main__":
    main()
