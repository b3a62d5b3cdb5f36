"""The lab: an invented world whose truth is known, and two small Llamas pretrained from
scratch on it, one on every document (`lab_base`) and one with the forget domains' documents
removed (`lab_filtered`, the data-filtered twin that unlearning is measured against).

Modules: domains (what the world is made of), world (generating it), tokenizer, pretrain
(the training loop), build (stages, cache, scores), schema (config keys); `python -m
rmu.lab` builds it all (conf/lab.yaml).
"""
