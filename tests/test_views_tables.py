"""engine/views/tables.py: the one set of formatters, the fixed-width table and the CSV writer."""
import csv
import io

from engine.views import tables


def test_every_formatter_shows_a_missing_figure_as_a_dash():
    for format_ in (tables.fixed, tables.ms, tables.gib, tables.mib, tables.percent, tables.duration, tables.size,
                    tables.general):
        assert format_(None) == "-"
    assert tables.ms_range(None, 0.1) == "-"


def test_numbers_read_in_the_unit_that_suits_them():
    assert [tables.duration(s) for s in (0.0123, 0.123, 1.5)] == ["12.3 ms", "123 ms", "1.50 s"]
    assert [tables.size(b) for b in (300 * 2**20, 3 * 2**30)] == ["300 MiB", "3.00 GiB"]
    assert [tables.percent(s) for s in (0.0042, 0.43)] == ["0.4%", "43%"]
    assert tables.ms(0.0012) == "1.2" and tables.ms(0.0012, 2, " ms") == "1.20 ms"
    assert tables.ms_range(0.0011, 0.0016) == "1.10-1.60" and tables.gib(2**29, 3) == "0.500"
    assert [tables.general(v) for v in (0.123456, 3, True, "sdpa")] == ["0.1235", "3", "True", "sdpa"]
    assert tables.general(3, scale=100.0) == "300" and tables.fixed(7.25, 2, unit=" x") == "7.25 x"


def test_the_fixed_width_table_aligns_columns_and_trims_line_ends():
    text = tables.fixed_width([("variant", "TPOT ms"), ("baseline", "1.2"), ("sdpa", "")])
    assert text.splitlines() == ["variant   TPOT ms", "baseline  1.2", "sdpa"]


def test_csv_takes_every_key_in_order_or_the_fields_given():
    rows = [{"variant": "baseline", "tpot_s": 0.1}, {"variant": "sdpa", "reason": "x", "tpot_s": None}]
    assert tables.csv_text(rows).splitlines() == ["variant,tpot_s,reason", "baseline,0.1,", "sdpa,,x"]
    parsed = list(csv.DictReader(io.StringIO(tables.csv_text(rows, ["tpot_s", "variant"]))))
    assert parsed == [{"tpot_s": "0.1", "variant": "baseline"}, {"tpot_s": "", "variant": "sdpa"}]
