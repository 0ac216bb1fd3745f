import pytest

from voiceplatform.turntaking import ends_incomplete, is_backchannel


@pytest.mark.parametrize(
    "text",
    ["Я хотел бы узнать, что", "Мне нужен корм и", "Доставка в", "э-э", "Ну, я думаю,", "Скажите, а"],
)
def test_unfinished_utterances(text: str) -> None:
    assert ends_incomplete(text)


@pytest.mark.parametrize(
    "text", ["Сколько стоит доставка?", "Хочу заказать корм.", "Что?", "да", "", "Спасибо, до свидания!"]
)
def test_finished_utterances(text: str) -> None:
    assert not ends_incomplete(text)


@pytest.mark.parametrize(
    "text", ["Угу", "ага.", "Да-да", "мм", "ага, понятно", "Да, да, конечно.", "Адга?", "Уху."]
)
def test_backchannels(text: str) -> None:
    assert is_backchannel(text)


@pytest.mark.parametrize(
    "text",
    ["", "нет", "Стоп", "Да, я хочу заказать корм", "подождите", "угу а сколько стоит доставка", "до", "ого"],
)
def test_not_backchannels(text: str) -> None:
    assert not is_backchannel(text)
