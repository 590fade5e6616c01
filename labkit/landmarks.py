"""Published figures for landmark models and a timeline of the field, each entry with its source.

Every number here is copied from the cited publication (a key in the book's ``references.bib``). Training compute
is filled in only where the publication reports it; ``tokens`` lets a reader estimate it as 6·N·D (chapter 1's
notebook does, and compares the estimate with the reported figures).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class Landmark:
    """One model, as published."""

    name: str
    year: int  # year of the publication that introduced it
    parameters: float  # trainable parameters, N
    tokens: float | None  # training tokens, D, where the publication states it
    compute: float | None  # training compute in FLOP, where the publication reports it
    source: str  # key in references.bib
    note: str  # where in the source the figures are


LANDMARKS: tuple[Landmark, ...] = (
    Landmark(name="LeNet-5", year=1998, parameters=6.0e4, tokens=None, compute=None, source="lecun1998gradient",
             note="'60,000 trainable free parameters' (section II.B)"),
    Landmark(name="AlexNet", year=2012, parameters=6.0e7, tokens=None, compute=None, source="krizhevsky2012imagenet",
             note="'60 million parameters' (abstract)"),
    Landmark(name="Transformer (big)", year=2017, parameters=2.13e8, tokens=None, compute=2.3e19,
             source="vaswani2017attention", note="213M parameters (Table 3); training cost 2.3e19 FLOPs (Table 2)"),
    Landmark(name="GPT", year=2018, parameters=1.17e8, tokens=None, compute=None, source="radford2019language",
             note="117M, the smallest model of Table 2 of the GPT-2 paper, is the original GPT's size"),
    Landmark(name="BERT-large", year=2018, parameters=3.4e8, tokens=None, compute=None, source="devlin2019bert",
             note="340M parameters (section 3)"),
    Landmark(name="GPT-2", year=2019, parameters=1.542e9, tokens=None, compute=None, source="radford2019language",
             note="1542M parameters (Table 2)"),
    Landmark(name="GPT-3", year=2020, parameters=1.75e11, tokens=3.0e11, compute=3.14e23, source="brown2020language",
             note="175B parameters, 300B training tokens, 3.14e23 FLOP (Table D.1)"),
    Landmark(name="Gopher", year=2021, parameters=2.8e11, tokens=3.0e11, compute=None, source="rae2021scaling",
             note="280B parameters trained on 300B tokens (section 3)"),
    Landmark(name="Chinchilla", year=2022, parameters=7.0e10, tokens=1.4e12, compute=None,
             source="hoffmann2022training", note="70B parameters, 1.4T tokens (section 4)"),
    Landmark(name="PaLM", year=2022, parameters=5.4e11, tokens=7.8e11, compute=None, source="chowdhery2023palm",
             note="540B parameters, 780B tokens (sections 1 and 3)"),
    Landmark(name="LLaMA-65B", year=2023, parameters=6.52e10, tokens=1.4e12, compute=None, source="touvron2023llama",
             note="65.2B parameters, 1.4T tokens (Table 2)"),
    Landmark(name="Llama 3.1 405B", year=2024, parameters=4.05e11, tokens=1.56e13, compute=3.8e25,
             source="grattafiori2024llama", note="405B parameters, 15.6T tokens, 3.8e25 FLOP (section 1)"),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Milestone:
    """One event on the road from the first artificial neuron to ChatGPT."""

    year: int
    event: str
    source: str  # key in references.bib


TIMELINE: tuple[Milestone, ...] = (
    Milestone(year=1943, event="McCulloch and Pitts: a logical model of the neuron", source="mcculloch1943logical"),
    Milestone(year=1958, event="Rosenblatt: the perceptron learns its weights", source="rosenblatt1958perceptron"),
    Milestone(year=1969, event="Minsky and Papert: limits of one-layer perceptrons", source="minsky1969perceptrons"),
    Milestone(year=1986, event="Rumelhart, Hinton, Williams: backpropagation", source="rumelhart1986learning"),
    Milestone(year=1997, event="Hochreiter and Schmidhuber: LSTM", source="hochreiter1997long"),
    Milestone(year=1998, event="LeCun et al.: LeNet-5 reads cheques", source="lecun1998gradient"),
    Milestone(year=2003, event="Bengio et al.: a neural probabilistic language model", source="bengio2003neural"),
    Milestone(year=2012, event="AlexNet wins ImageNet on GPUs", source="krizhevsky2012imagenet"),
    Milestone(year=2014, event="Bahdanau et al.: attention for translation", source="bahdanau2015neural"),
    Milestone(year=2017, event="Vaswani et al.: the Transformer", source="vaswani2017attention"),
    Milestone(year=2018, event="GPT: generative pretraining, then fine-tuning", source="radford2018improving"),
    Milestone(year=2018, event="BERT: bidirectional pretraining", source="devlin2019bert"),
    Milestone(year=2020, event="Kaplan et al.: neural scaling laws", source="kaplan2020scaling"),
    Milestone(year=2020, event="GPT-3: few-shot learning from a prompt", source="brown2020language"),
    Milestone(year=2022, event="Chinchilla: compute-optimal data and size", source="hoffmann2022training"),
    Milestone(year=2022, event="InstructGPT: fine-tuning from human feedback", source="ouyang2022training"),
    Milestone(year=2022, event="ChatGPT released to the public", source="openai2022chatgpt"),
    Milestone(year=2023, event="LLaMA: open weights for research", source="touvron2023llama"),
)
