"""``python -m hf_scdd <stage>`` (and ``accelerate launch -m hf_scdd <stage>``) = ``hf-scdd <stage>``."""

from .cli import main

if __name__ == "__main__":
    main()
