"""What the client scripts share: the checks' reporting, and an openai client of the server under test."""


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what)


def connect(base):
    """The official openai client of the server at `base`, its model's name, and greedy settings for it."""
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
    model = client.models.list().data[0].id
    return client, model, dict(model=model, temperature=0, seed=1)
