"""What the training stages share: the accelerator and per-stage precision (``accelerator``), the one training
loop with checkpoints (``loop``), evaluation over a split (``evaluation``), stage start-up (``stage``),
pre-training plans (``pretrain``), the linear probe (``linear_probe``), student post-training
(``post_train``) and the results report (``report``).

Kept free of imports so that importing one of them never pulls in the others.
"""
