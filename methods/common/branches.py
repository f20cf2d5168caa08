"""Cut a zoo model into a shared trunk and a branch head, for multi-branch (online KD) training.

Online distillation methods (OKDDip, ONE, CL-ILR) train one shared trunk with several
branches, each a copy of the network's last stage plus its classifier. Instead of a private
re-implementation of every architecture, the zoo model itself is traced with ``torch.fx``
and its graph is cut at the input of a stage: the trunk computes everything before that
stage, the head everything from the stage to the classifier's input, and the classifier is
the model's own last ``nn.Linear``. Both graphs call the model's own module objects, so
training them trains the model, which stays the plain zoo architecture for deployment.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx, nn

from kdbench.methods.common.pruning import classifier_of


class BranchSplitError(ValueError):
    """The model's forward cannot be cut into trunk -> head -> classifier."""


@dataclass
class BranchSplit:
    """One model cut at a stage: ``classifier(head(trunk(x))) == model(x)``."""

    trunk: fx.GraphModule  # input -> the stage's input
    head: fx.GraphModule  # the stage's input -> the classifier's input (pooled features)
    classifier: nn.Linear

    @property
    def feature_dim(self) -> int:
        return self.classifier.in_features


class _StageLeafTracer(fx.Tracer):
    """Keeps the branching stage as one call, so the graph can be cut right before it."""

    def __init__(self, stage: nn.Module):
        super().__init__()
        self.stage = stage

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is self.stage or super().is_leaf_module(m, module_qualified_name)


def split_at_stage(model: nn.Module, stage: int = -1) -> BranchSplit:
    """Cut ``model`` before ``model.stages()[stage]``; raises ``BranchSplitError`` if it can't.

    The model must expose ``stages()`` (every zoo model does), be traceable by ``torch.fx``
    (no control flow on tensor values or shapes), call the stage once, and end in its last
    ``nn.Linear`` with nothing after it.
    """
    name = type(model).__name__
    stages = getattr(model, "stages", None)
    if not callable(stages):
        raise BranchSplitError(f"{name} has no stages() method naming its stages")
    try:
        stage_module = stages()[stage]
    except IndexError as exc:
        raise BranchSplitError(f"{name} has {len(stages())} stages; stage {stage} does not "
                               "exist") from exc
    classifier = classifier_of(model)
    try:
        graph = _StageLeafTracer(stage_module).trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        raise BranchSplitError(f"torch.fx cannot trace {name}.forward ({exc})") from exc
    nodes = list(graph.nodes)
    stage_node = _single_call(nodes, model, stage_module, f"stage {stage} of {name}")
    classifier_node = _single_call(nodes, model, classifier, f"the classifier of {name}")
    trunk_out = _only_input(stage_node, f"stage {stage} of {name}")
    features = _only_input(classifier_node, f"the classifier of {name}")
    _check_cut(nodes, stage_node, trunk_out, classifier_node, name)
    return BranchSplit(
        trunk=fx.GraphModule(model, _subgraph(nodes[: nodes.index(stage_node)], {}, trunk_out),
                             class_name=f"{name}Trunk"),
        head=fx.GraphModule(model, _head_graph(nodes, stage_node, classifier_node, trunk_out,
                                               features), class_name=f"{name}Head"),
        classifier=classifier,
    )


def _single_call(nodes: list[fx.Node], model: nn.Module, module: nn.Module,
                 what: str) -> fx.Node:
    calls = [n for n in nodes
             if n.op == "call_module" and model.get_submodule(n.target) is module]
    if len(calls) != 1:
        raise BranchSplitError(f"{what} is called {len(calls)} times in forward; "
                               "a branch point must be called exactly once")
    return calls[0]


def _only_input(node: fx.Node, what: str) -> fx.Node:
    if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
        raise BranchSplitError(f"{what} must take exactly one tensor input")
    return node.args[0]


def _check_cut(nodes: list[fx.Node], stage_node: fx.Node, trunk_out: fx.Node,
               classifier_node: fx.Node, name: str) -> None:
    """Only the stage input may cross the cut, and the classifier must produce the output."""
    start, end = nodes.index(stage_node), nodes.index(classifier_node)
    if end < start:
        raise BranchSplitError(f"the classifier of {name} runs before the branching stage")
    before = set(nodes[:start])
    for node in nodes[start:]:
        crossing = [a for a in node.all_input_nodes if a in before and a is not trunk_out]
        if crossing:
            raise BranchSplitError(f"{name}: {node.name} reads {crossing[0].name} from before "
                                   "the branching stage (a skip around it); cannot branch there")
    output = nodes[-1]
    if nodes[end + 1:] != [output] or output.args[0] is not classifier_node:
        raise BranchSplitError(f"{name}.forward must return its classifier's output directly")


def _subgraph(nodes: list[fx.Node], env: dict[fx.Node, fx.Node], result: fx.Node,
              graph: fx.Graph | None = None) -> fx.Graph:
    """Copy ``nodes`` (placeholders included) into ``graph`` and return ``result`` from it."""
    graph = graph or fx.Graph()
    for node in nodes:
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(env[result])
    return graph


def _head_graph(nodes: list[fx.Node], stage_node: fx.Node, classifier_node: fx.Node,
                trunk_out: fx.Node, features: fx.Node) -> fx.Graph:
    graph = fx.Graph()
    env = {trunk_out: graph.placeholder("x")}
    body = nodes[nodes.index(stage_node): nodes.index(classifier_node)]
    return _subgraph(body, env, features, graph)
