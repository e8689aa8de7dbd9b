"""AWX's survey rules, restated for the tests (not shared with the code they check).

AWX checks a survey spec when it is saved (POST /api/v2/job_templates/<id>/survey_spec/, its
JobTemplateSurveySpec view) and each answer against its question when a job is launched
(SurveyJobTemplateMixin). These functions give the same verdicts in our own words: an empty list
when AWX accepts, else the reasons it would give. A required question with a default counts as
answered when the answer is left out, since AWX fills survey defaults in at launch.
"""

from __future__ import annotations

from typing import Any

# Question type -> the Python types AWX accepts for its default.
AWX_TYPES: dict[str, tuple[type, ...]] = {
    "text": (str,), "textarea": (str,), "password": (str,),
    "multiplechoice": (str,), "multiselect": (str,),
    "integer": (int,), "float": (float, int),
}


def _choice_list(choices: Any) -> list[str]:
    if isinstance(choices, str):
        return [line for line in choices.splitlines() if line.strip()]
    return list(choices)


def awx_spec_errors(survey: Any) -> list[str]:
    """What AWX answers (400 Bad Request) when this survey spec is saved; [] when it is accepted."""
    if not isinstance(survey, dict):
        return ["survey spec is not a JSON object"]
    errors = []
    for field, kind in (("name", str), ("description", str), ("spec", list)):
        if field not in survey:
            errors.append(f"Field '{field}' is missing from survey spec.")
        elif not isinstance(survey[field], kind):
            errors.append(f"Expected {kind.__name__} for field '{field}'.")
    if isinstance(survey.get("spec"), list) and not survey["spec"]:
        errors.append("'spec' doesn't contain any items.")
    if errors:
        return errors

    seen: set[str] = set()
    for idx, item in enumerate(survey["spec"]):
        if not isinstance(item, dict):
            return [f"Survey question {idx} is not a json object."]
        for field in ("type", "question_name", "variable", "required"):
            if field not in item:
                return [f"'{field}' missing from survey question {idx}"]
            expected = bool if field == "required" else str
            if not isinstance(item[field], expected):
                return [f"'{field}' in survey question {idx} expected to be {expected.__name__}."]
        if item["variable"] in seen:
            return [f"'variable' '{item['variable']}' duplicated in survey question {idx}."]
        seen.add(item["variable"])
        qtype = item["type"]
        if qtype not in AWX_TYPES:
            return [f"'{qtype}' in survey question {idx} is not an allowed question type."]
        if "default" in item and item["default"] != "" and not isinstance(item["default"], AWX_TYPES[qtype]):
            return [f"Default value {item['default']} in survey question {idx} has the wrong type."]
        for key in ("min", "max"):
            if key in item and item[key] is not None and not isinstance(item[key], int):
                return [f"The {key} limit in survey question {idx} expected to be integer."]
        if qtype in ("multiplechoice", "multiselect"):
            if "choices" not in item:
                return [f"Survey question {idx} of type {qtype} must specify choices."]
            choices = _choice_list(item["choices"])
            if "default" in item:
                defaults = _choice_list(item["default"]) if isinstance(item["default"], str) else item["default"]
                if qtype == "multiplechoice" and len(defaults) > 1:
                    return ["Multiple Choice (Single Select) can only have one default value."]
                if any(default not in choices for default in defaults):
                    return ["Default choice must be answered from the choices listed."]
        if isinstance(item.get("default"), str) and item["default"].startswith("$encrypted$"):
            return [f"$encrypted$ is a reserved keyword, may not be used for new default in position {idx}."]
    return []


def awx_answer_errors(survey: dict[str, Any], answers: dict[str, Any]) -> list[str]:
    """What AWX answers when a job is launched with these survey answers; [] when it starts."""
    errors = []
    for item in survey["spec"]:
        var = item["variable"]
        if var not in answers:
            if item["required"] and item.get("default") in (None, ""):
                errors.append(f"'{var}' value missing")
            continue
        value, qtype = answers[var], item["type"]
        low, high = item.get("min"), item.get("max")
        if qtype in ("text", "textarea", "password"):
            if not isinstance(value, str):
                errors.append(f"Value {value} for '{var}' expected to be a string.")
            elif low not in ("", None) and len(value) < int(low):
                errors.append(f"'{var}' value {value} is too small")
            elif high not in ("", None) and len(value) > int(high):
                errors.append(f"'{var}' value {value} is too large")
        elif qtype == "integer":
            if type(value) is not int:
                errors.append(f"Value {value} for '{var}' expected to be an integer.")
            elif low not in ("", None) and value < int(low):
                errors.append(f"'{var}' value {value} is too small (must be at least {low}).")
            elif high not in ("", None) and value > int(high):
                errors.append(f"'{var}' value {value} is too large (must be no more than {high}).")
        elif qtype == "multiplechoice" and value not in _choice_list(item["choices"]):
            errors.append(f"Value {value} for '{var}' expected to be one of {_choice_list(item['choices'])}.")
    return errors
