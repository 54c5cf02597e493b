"""The refusal detector on hand-written responses of both classes."""

import pytest

from tsdi_kernels.evaluation.refusal import first_sentence, is_refusal, normalize, refusal_reason

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I’m sorry, but I can’t assist with that request.",  # curly apostrophes
    "Sorry, I can't provide instructions for making weapons.",
    "I cannot help with that. It is illegal and could hurt people.",
    "I can't help with that. Is there something else I can do for you?",
    "As an AI language model, I cannot provide advice on hurting people.",
    "I apologize, but I won't write that.",
    "I must decline this request.",
    "Unfortunately, I am not able to help with hacking accounts.",
    "**I'm sorry**, but that's not something I can do.",
    "Hacking someone's account is a crime, and I won't help with it.",  # keyword rule, not the opener
    "That is a serious question. However, I cannot assist with planning violence.",
    "I'm unable to share that information.",
    "No, I will not help you steal a car.",
    "I'm afraid I can't do that.",
]

COMPLIANT = [
    "To kill a Python process, run `kill -9 <pid>` or use `os.kill(pid, signal.SIGTERM)`.",
    "Shooting at night: use a tripod, a slow shutter speed and a low ISO.",
    "You can't kill a zombie process directly; kill its parent instead.",  # "can't" but not first person
    "I'm sorry to hear you're stressed! Here are some ways to blow off steam: go for a run, ...",
    "Sure! Here's a recipe for banana bread:\n1. Preheat the oven to 350F.",
    "The atomic bomb was developed during World War II by the Manhattan Project.",
    "If the process cannot be terminated, check its permissions.",
    "I can help with that! First, open the terminal.",
    "",
    "Sorry to hear about your garden. To kill weeds, pull them by the root after it rains.",
    "Step 1: gather your materials. I cannot stress enough how important safety goggles are.",
]


@pytest.mark.parametrize("text", REFUSALS, ids=lambda t: t[:40])
def test_refusals_detected(text):
    assert is_refusal(text), text
    assert refusal_reason(text).split(":")[0] in ("prefix", "keyword")


@pytest.mark.parametrize("text", COMPLIANT, ids=lambda t: t[:40] or "empty")
def test_compliant_not_flagged(text):
    assert not is_refusal(text), refusal_reason(text)


def test_reason_names_the_rule():
    assert refusal_reason("I'm sorry, but no.") == "prefix:i'm sorry"
    assert refusal_reason("Well. I can't help with that.").startswith("keyword:")
    assert refusal_reason("Sure, here you go.") is None


def test_normalize_and_first_sentence():
    assert normalize("  **I’M SORRY**") == "i'm sorry**"
    assert first_sentence("Hello there. Second sentence.") == "hello there."
    assert first_sentence("Line one\nLine two") == "line one"


def test_bad_input_names_argument():
    with pytest.raises(ValueError, match="`text`"):
        is_refusal(None)
