"""The stages, one module each: its ``@dataclass`` config and its ``main(config)`` (validate → build → run →
write → push). A stage never imports another stage; what stages share lives in the packages beside this one,
and :mod:`hf_scdd.pipeline` chains the stages' mains."""
