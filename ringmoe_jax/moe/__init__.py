"""Model-agnostic Mixture-of-Experts core.

routing.py  policy: router logits -> a RoutingDecision (plain data) + balancing loss + metrics.
dispatch.py mechanism: move tokens into per-expert buffers and back (capacity-based).
experts.py  the expert FFN weights, stacked along an expert axis.
layer.py    wiring: RingMoE's hierarchical layer (modality-specialised + collaborative + shared).
"""
