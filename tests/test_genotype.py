import json

import pytest

from rankscope.errors import GenotypeError
from rankscope.genotype import (PUBLISHED, Genotype, from_json, load_genotype, parse_darts_text)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_round_trip_text_and_json(name):
    g = PUBLISHED[name]
    assert parse_darts_text(g.to_darts_text()) == g
    assert from_json(g.to_json()) == g


def test_darts_text_with_range_parses():
    text = ("Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 2), "
            "('dil_conv_5x5', 1), ('dil_conv_3x3', 3), ('dil_conv_3x3', 0), ('sep_conv_5x5', 1), "
            "('dil_conv_5x5', 2)], normal_concat=range(2, 6), reduce=[('sep_conv_3x3', 0), "
            "('dil_conv_3x3', 1), ('dil_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 0), "
            "('dil_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 1)], reduce_concat=range(2, 6))")
    assert parse_darts_text(text) == PUBLISHED["msr-darts"]


@pytest.mark.parametrize("text, msg", [
    ("__import__('os').system('echo pwned')", "must look like"),
    ("Genotype(normal=[('sep_conv_3x3', 0)], reduce=[])", "needs 8 edges"),
    ("Genotype(normal=open('x'), reduce=[])", "unexpected expression"),
    ("Genotype(normal=[", "not valid"),
])
def test_bad_text_is_refused_without_eval(text, msg):
    with pytest.raises(GenotypeError, match=msg):
        parse_darts_text(text)


def test_validation_errors():
    d = PUBLISHED["msr-darts"].to_dict()
    d["normal"][0] = ["conv_7x7", 0]
    with pytest.raises(GenotypeError, match="unknown op 'conv_7x7'"):
        from_json(json.dumps(d))
    d = PUBLISHED["msr-darts"].to_dict()
    d["normal"][0] = ["sep_conv_3x3", 2]  # node 2 cannot read itself
    with pytest.raises(GenotypeError, match="cannot take input 2"):
        from_json(json.dumps(d))
    d = PUBLISHED["msr-darts"].to_dict()
    d["reduce_concat"] = [1, 2]
    with pytest.raises(GenotypeError, match="reduce_concat"):
        from_json(json.dumps(d))
    with pytest.raises(GenotypeError, match="not valid JSON"):
        from_json("{nope")


def test_load_genotype_sources(tmp_path):
    g = PUBLISHED["darts-v2"]
    assert load_genotype("darts-v2") is g
    (tmp_path / "genotype.json").write_text(g.to_json())
    assert load_genotype(str(tmp_path / "genotype.json")) == g
    assert load_genotype(str(tmp_path)) == g
    (tmp_path / "g.txt").write_text(g.to_darts_text())
    assert load_genotype(str(tmp_path / "g.txt")) == g
    assert load_genotype(g.to_darts_text()) == g
    with pytest.raises(GenotypeError, match="not a published name"):
        load_genotype("no-such-genotype")


def test_genotype_is_frozen_and_hashable():
    g = PUBLISHED["msr-darts"]
    with pytest.raises(Exception):
        g.normal = ()
    assert isinstance(hash(g), int)
    assert isinstance(g, Genotype)
