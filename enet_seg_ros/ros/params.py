"""Declared ROS parameters: one spec per parameter, with description, range and validation.

A :class:`ParamSpec` is the single place where a parameter's default, documentation,
read-only flag and valid values live. :func:`declare_all` turns specs into declared
parameters (``ParameterDescriptor`` with description, ranges and ``read_only``) and checks
the start-up values; :func:`validate_updates` is the runtime check used by the node's
set-parameters callback, so an invalid update is rejected with a reason instead of
half-applied.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


class ParameterError(ValueError):
    """A parameter value is invalid (the text names the parameter and the problem)."""


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter.

    Attributes:
        name: parameter name.
        default: default value; its Python type fixes the ROS parameter type.
        description: one-line documentation (shown by ``ros2 param describe``).
        read_only: True when the value is only read at start-up.
        choices: allowed string values.
        value_range: inclusive ``(low, high)`` for numbers (also put in the descriptor).
        check: extra validator returning an error text or None.
        constraints: human-readable constraints for the descriptor.
    """

    name: str
    default: Any
    description: str
    read_only: bool = True
    choices: Optional[Tuple[str, ...]] = None
    value_range: Optional[Tuple[float, float]] = None
    check: Optional[Callable[[Any], Optional[str]]] = None
    constraints: str = ""

    def problem(self, value: Any) -> Optional[str]:
        """Why ``value`` is invalid for this parameter, or None if it is fine."""
        if self.choices is not None and value not in self.choices:
            return "{} must be one of {}, got {!r}".format(self.name, list(self.choices), value)
        if self.value_range is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = self.value_range
            if not low <= value <= high:
                return "{} must be in [{}, {}], got {}".format(self.name, low, high, value)
        if self.check is not None:
            reason = self.check(value)
            if reason:
                return "{}: {}".format(self.name, reason)
        return None

    def descriptor(self):
        """The ``rcl_interfaces/ParameterDescriptor`` for this spec."""
        from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

        constraints = self.constraints
        if self.choices is not None and not constraints:
            constraints = "one of: " + ", ".join(self.choices)
        desc = ParameterDescriptor(description=self.description, read_only=self.read_only,
                                   additional_constraints=constraints)
        if self.value_range is not None:
            low, high = self.value_range
            if isinstance(self.default, float):
                desc.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)]
            elif isinstance(self.default, int) and not isinstance(self.default, bool):
                desc.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
        return desc


def topic_name_problem(value: Any) -> Optional[str]:
    """Why ``value`` is not a valid ROS topic name (absolute, relative or ``~/``), or None; an
    empty string is fine (the specs where it means "none" or "default" say so). Used as a spec's
    ``check``, so a bad name is refused where it is given, not by a failing subscription later."""
    from rclpy.exceptions import InvalidTopicNameException
    from rclpy.validate_topic_name import validate_topic_name

    if value == "":
        return None
    try:
        validate_topic_name(str(value))
    except InvalidTopicNameException as exc:
        return "not a valid topic name: {}".format(str(exc).splitlines()[0])
    return None


def required_topic_problem(value: Any) -> Optional[str]:
    """:func:`topic_name_problem` for a topic that must be given (empty is refused too)."""
    return "must name a topic, got an empty string" if value == "" else topic_name_problem(value)


def spec_table(specs: Sequence[ParamSpec]) -> Dict[str, ParamSpec]:
    """``{name: spec}``, refusing duplicate names."""
    table: Dict[str, ParamSpec] = {}
    for spec in specs:
        if spec.name in table:
            raise ValueError("duplicate parameter spec {!r}".format(spec.name))
        table[spec.name] = spec
    return table


def declare_all(node, specs: Sequence[ParamSpec]) -> Dict[str, Any]:
    """Declare every spec on ``node`` and return the start-up values.

    Raises:
        ParameterError: a value from the command line / params file has the wrong type, is
            out of range or fails the spec's check (the message names the parameter).
    """
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
    from rclpy.parameter import Parameter

    values: Dict[str, Any] = {}
    for spec in specs:
        # An empty list says nothing of its element type: empty-list defaults are string arrays
        # (declared by type, so the value is "not set" until given and reads back as []).
        default = Parameter.Type.STRING_ARRAY if isinstance(spec.default, list) and not spec.default \
            else spec.default
        try:
            param = node.declare_parameter(spec.name, default, spec.descriptor())
        except InvalidParameterTypeException as exc:
            raise ParameterError("parameter {!r} has the wrong type (expected {}): {}".format(
                spec.name, type(spec.default).__name__, exc)) from None
        except InvalidParameterValueException as exc:
            raise ParameterError("parameter {!r} is invalid: {}".format(spec.name, exc)) from None
        value = param.value
        if value is None and default is not spec.default:  # not given: an empty string array, also on get
            value = []
            node.set_parameters([Parameter(spec.name, Parameter.Type.STRING_ARRAY, value)])
        reason = spec.problem(value)
        if reason:
            raise ParameterError("invalid parameter " + reason)
        values[spec.name] = value
    return values


def validate_updates(table: Dict[str, ParamSpec], updates: Sequence[Tuple[str, Any]]) -> Optional[str]:
    """Why a runtime update of ``(name, value)`` pairs must be rejected, or None to accept.

    Names not in ``table`` (e.g. ``use_sim_time``, read-only model info) are left to rclpy.
    """
    problems: List[str] = []
    for name, value in updates:
        spec = table.get(name)
        if spec is None:
            continue
        if spec.read_only:
            problems.append("{} is read-only (set it at start-up)".format(name))
            continue
        reason = spec.problem(value)
        if reason:
            problems.append(reason)
    return "; ".join(problems) or None
