import pytest

from layerwise import recipes
from layerwise import schedules as S


def test_every_recipe_builds_for_any_group_count():
    for name in recipes.RECIPES:
        for k in (1, 3, 7):
            schedule = recipes.build(name, k)
            assert schedule.factors(0.5, k).shape == (k,)


def test_llr_defaults_to_smiths_reversing_depth_ramp():
    schedule = recipes.build("llr", 3, policy=recipes.make_policy("constant"))
    assert schedule.factors(0.0, 3).tolist() == pytest.approx([1.5, 1.0, 0.5])
    assert schedule.factors(1.0, 3).tolist() == pytest.approx([0.5, 1.0, 1.5])


def test_discriminative_options():
    assert recipes.build("discriminative", 3, ratio=2.0).factors(0, 3).tolist() == [0.25, 0.5, 1.0]
    assert recipes.build("discriminative", 3, lo=0.01, hi=1.0).factors(0, 3).tolist() == pytest.approx([0.01, 0.1, 1])


def test_policies_with_warmup():
    policy = recipes.make_policy("cosine", warmup=0.1)
    assert isinstance(policy, S.Warmup) and policy(0.0) == 0.0


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: recipes.build("freezeout-typo", 3), "recipe"),
        (lambda: recipes.build("llr", 0), "num_groups"),
        (lambda: recipes.build("llr", 3, start=[1, 1, 1]), "start, end"),
        (lambda: recipes.build("llr", 2, start=[1, 1, 1], end=[1, 1, 1]), "3 groups"),
        (lambda: recipes.build("discriminative", 3, lo=0.1), "lo, hi"),
        (lambda: recipes.build("staggered", 3, policy=S.Cosine()), "policy"),
        (lambda: recipes.make_policy("exponential"), "policy"),
    ],
)
def test_bad_recipe_input(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_an_unknown_recipe_option_is_a_value_error_naming_the_valid_ones():
    with pytest.raises(ValueError, match="constant: unknown option 'ratio'; constant has none"):
        recipes.build("constant", 3, ratio=2.0)
    with pytest.raises(ValueError, match=r"llr: unknown option 'fist'; llr has \['start', 'end', 'windows'"):
        recipes.build("llr", 3, fist=2.0)
