"""herd's Llama 2 chat prompts are token for token what Meta's reference chat_completion builds."""

from __future__ import annotations

import pytest

from schemas.job import PromptSpec
from workers.rendering import RenderError, llama2_chat_token_ids, render_token_ids
from workers.request_formats import PromptSource


def reference_chat_completion_ids(dialog, tokenizer):
    """Meta's llama/generation.py chat_completion, transcribed line by line; tokenizer.encode(s, bos, eos)
    there is sentencepiece's encode with optional BOS/EOS ids around it."""
    B_INST, E_INST = "[INST]", "[/INST]"
    B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"

    def encode(s, bos, eos):
        t = tokenizer.encode(s, add_special_tokens=False)
        return ([tokenizer.bos_token_id] if bos else []) + t + ([tokenizer.eos_token_id] if eos else [])

    if dialog[0]["role"] == "system":
        dialog = [
            {"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}
        ] + dialog[2:]
    assert all(msg["role"] == "user" for msg in dialog[::2]) and all(msg["role"] == "assistant" for msg in dialog[1::2])
    dialog_tokens = sum(
        [
            encode(
                f"{B_INST} {(prompt['content']).strip()} {E_INST} {(answer['content']).strip()} ", bos=True, eos=True
            )
            for prompt, answer in zip(dialog[::2], dialog[1::2], strict=False)
        ],
        [],
    )
    assert dialog[-1]["role"] == "user"
    dialog_tokens += encode(f"{B_INST} {(dialog[-1]['content']).strip()} {E_INST}", bos=True, eos=False)
    return dialog_tokens


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


DIALOGS = {
    "single turn": [user("What is the recipe of mayonnaise?")],
    "with system": [system("Always answer with Haiku"), user("I am going to Paris, what should I see?")],
    "three turns": [
        user("I am going to Paris, what should I see?"),
        assistant("Paris, the capital of France, is known for the Eiffel Tower."),
        user("What is so great about #1?"),
    ],
    "system and three turns": [
        system("Be brief."),
        user("Name a river."),
        assistant("The Seine."),
        user("Another one?"),
    ],
    "leading and trailing whitespace": [user("   padded question \n\n"), assistant("\t answer  "), user(" again ")],
    "empty system": [system(""), user("hello")],
    "unicode": [user("Quelle est la capitale du Japon ? 東京 😀 naïve café")],
}


def test_a_known_prompt_has_the_llama2_token_ids(llama2_tokenizer):
    # "[INST] hi [/INST]" in the Llama 2 vocabulary (as llama.cpp and sentencepiece give it), after BOS.
    assert llama2_chat_token_ids([user("hi")], llama2_tokenizer) == [
        1,
        518,
        25580,
        29962,
        7251,
        518,
        29914,
        25580,
        29962,
    ]


@pytest.mark.parametrize("name", DIALOGS)
def test_chat_token_ids_equal_the_reference_algorithm(llama2_tokenizer, name):
    dialog = DIALOGS[name]
    ids = llama2_chat_token_ids(dialog, llama2_tokenizer)
    assert ids == reference_chat_completion_ids(dialog, llama2_tokenizer)
    completed_turns = sum(message["role"] == "assistant" for message in dialog)
    assert ids.count(llama2_tokenizer.bos_token_id) == completed_turns + 1
    assert ids.count(llama2_tokenizer.eos_token_id) == completed_turns


def test_a_prompt_column_with_a_job_system_prompt_is_the_reference_system_dialog(llama2_tokenizer):
    prompt = PromptSpec(format="llama2-chat", system_prompt="Always answer with Haiku")
    ids = render_token_ids(PromptSource(text="I am going to Paris"), prompt, llama2_tokenizer)
    assert ids == reference_chat_completion_ids(
        [system("Always answer with Haiku"), user("I am going to Paris")], llama2_tokenizer
    )


@pytest.mark.parametrize("tag", ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"])
def test_a_message_holding_special_tags_is_refused_as_in_the_reference(llama2_tokenizer, tag):
    with pytest.raises(RenderError, match="special tags"):
        llama2_chat_token_ids([user(f"please {tag} obey")], llama2_tokenizer)


@pytest.mark.parametrize("name", sorted(DIALOGS))
def test_the_fake_engines_torch_free_tokenizer_renders_the_ids_transformers_does(tiny_model, tiny_tokenizer, name):
    """The fake engine's tokenizer for benchmarks of tens of replicas (tests/cpu/fake_engine.py) must
    count the same tokens as the real one, raw and llama2-chat, and decode alike."""
    from tests.cpu.fake_engine import TokenizerWithoutTorch

    light = TokenizerWithoutTorch(str(tiny_model))
    dialog = DIALOGS[name]
    assert llama2_chat_token_ids(dialog, light) == llama2_chat_token_ids(dialog, tiny_tokenizer)
    text = dialog[-1]["content"]
    raw = PromptSpec(format="raw")
    source = PromptSource(text=text)
    assert render_token_ids(source, raw, light) == render_token_ids(source, raw, tiny_tokenizer)
    ids = tiny_tokenizer.encode(text, add_special_tokens=True)
    assert light.decode(ids, skip_special_tokens=True) == tiny_tokenizer.decode(ids, skip_special_tokens=True)
