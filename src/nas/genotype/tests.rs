//! Unit tests of the genotype modules (kept apart so each module stays one concern).
use super::*;
use crate::nas::{CellSpace, OpSet};
use tch::{Device, Kind, Tensor};

/// `DARTS_V2` exactly as `genotypes.py` has it.
const DARTS_V2_TEXT: &str = "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])";
/// `DARTS_V1` as `genotypes.py` has it.
const DARTS_V1_TEXT: &str = "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])";

#[test]
fn official_text_parses_to_the_constants_and_prints_back() {
    let v2: Genotype = DARTS_V2_TEXT.parse().unwrap();
    assert_eq!(v2, DARTS_V2.to_genotype());
    assert_eq!(v2.to_darts_string(), DARTS_V2_TEXT);
    let v1: Genotype = DARTS_V1_TEXT.parse().unwrap();
    assert_eq!(v1, DARTS_V1.to_genotype());
    assert_eq!(v1.to_string(), DARTS_V1_TEXT);
    v2.validate(2, true).unwrap();
}

#[test]
fn the_train_search_log_form_with_range_parses() {
    // What `train_search.py` logs: concat as `range(2, 6)`, here over several lines.
    let text = DARTS_V2_TEXT
        .replace("[2, 3, 4, 5]", "range(2, 6)")
        .replace(", reduce=", ",\n    reduce=");
    let g: Genotype = text.parse().unwrap();
    assert_eq!(g, DARTS_V2.to_genotype());
    // Grouped per node (pt.darts), double quotes, trailing commas, a module prefix.
    let grouped = "genotypes.Genotype(normal=[[(\"sep_conv_3x3\", 0), ('sep_conv_3x3', 1)], [('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], [('sep_conv_3x3', 1), ('skip_connect', 0)], [('skip_connect', 0), ('dil_conv_3x3', 2),],], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=(2, 3, 4, 5),)";
    assert_eq!(grouped.parse::<Genotype>().unwrap(), DARTS_V2.to_genotype());
}

#[test]
fn parse_errors_say_where_and_what() {
    let cases = [
        (
            DARTS_V2_TEXT.replace("'dil_conv_3x3'", "'dil_conv3x3'"),
            "did you mean 'dil_conv_3x3'",
        ),
        (
            DARTS_V2_TEXT.replace("reduce_concat", "reduce_concatt"),
            "unknown field `reduce_concatt`",
        ),
        (
            DARTS_V2_TEXT.replace(", reduce_concat=[2, 3, 4, 5]", ""),
            "missing field `reduce_concat`",
        ),
        (
            DARTS_V2_TEXT.replace(
                "('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0)",
                "('sep_conv_3x3', 0), ('sep_conv_3x3', 1)",
            ),
            "two (op, input) pairs per node",
        ),
        (
            DARTS_V2_TEXT.replace("('skip_connect', 0), ('dil", "('skip_connect' 0), ('dil"),
            "expected `,`",
        ),
        (
            "Genotype(normal=[('sep_conv_3x3', 0)".to_string(),
            "found end of input",
        ),
        (format!("{DARTS_V2_TEXT} extra"), "after the closing"),
        (
            "Genotype(normal=[('sep_conv_3x3, 0)])".to_string(),
            "unterminated string",
        ),
    ];
    for (text, needle) in cases {
        let err = text.parse::<Genotype>().unwrap_err();
        assert!(matches!(err, NasError::GenotypeParse { .. }), "{err}");
        assert!(
            err.to_string().contains(needle),
            "`{err}` should mention `{needle}`"
        );
    }
    // Positions are 1-based line and column of the offending token.
    let err = "Genotype(\n  normal=[('sep_conv_3x3', x)]"
        .parse::<Genotype>()
        .unwrap_err();
    assert!(
        matches!(
            err,
            NasError::GenotypeParse {
                line: 2,
                column: 28,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn json_round_trips() {
    let g = DARTS_V2.to_genotype();
    let json = g.to_json().unwrap();
    assert!(json.contains("\"sep_conv_3x3\""), "{json}");
    assert_eq!(Genotype::from_json(&json).unwrap(), g);
    assert_eq!(Genotype::parse_any(&json).unwrap(), g);
    assert_eq!(Genotype::parse_any(DARTS_V2_TEXT).unwrap(), g);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("genotype.json");
    g.save_json(&path).unwrap();
    assert_eq!(Genotype::load(&path).unwrap(), g);
    assert!(matches!(
        Genotype::load(dir.path().join("nope.json")),
        Err(NasError::Io { .. })
    ));
    assert!(matches!(
        Genotype::from_json("{\"normal\": [], \"extra\": 1}"),
        Err(NasError::Json(_))
    ));
}

#[test]
fn darts_rule_matches_a_hand_worked_example() {
    // 1 node over 2 inputs would be trivial; use the DARTS space and make node 0 and node 1
    // explicit. Columns: none, max, avg, skip, sep3, sep5, dil3, dil5.
    let space = CellSpace::darts();
    let mut w = vec![vec![0.1f32; 8]; 14];
    // Node 0 (edges 0, 1): edge 1's best non-none is dil_conv_5x5 (0.5) although `none`
    // is larger (0.9) on edge 0, whose best non-none is skip (0.3).
    w[0][0] = 0.9;
    w[0][3] = 0.3;
    w[1][7] = 0.5;
    // Node 1 (edges 2, 3, 4 from states 0, 1, 2): state 2 (node 0) and state 0 win.
    w[2][4] = 0.6;
    w[3][5] = 0.2;
    w[4][1] = 0.7;
    let t = Tensor::from_slice(&w.concat()).reshape([14, 8]);
    let g = Genotype::derive(&space, &t, Some(&t), DeriveRule::Darts).unwrap();
    assert_eq!(
        g.normal[0],
        vec![(OpKind::DilConv5x5, 1), (OpKind::SkipConnect, 0)]
    );
    assert_eq!(
        g.normal[1],
        vec![(OpKind::MaxPool3x3, 2), (OpKind::SepConv3x3, 0)]
    );
    // Nodes 2 and 3 are all ties (0.1): lower source index and lower op index win.
    assert_eq!(
        g.normal[2],
        vec![(OpKind::MaxPool3x3, 0), (OpKind::MaxPool3x3, 1)]
    );
    assert_eq!(g.normal_concat, [2, 3, 4, 5]);
    g.validate(2, true).unwrap();

    // GDAS ranks (op, input) pairs: node 0's top pairs are none-free dil_conv_5x5 from 1
    // (0.5) and skip from 0 (0.3), as DARTS; in node 1 the top two pairs (max_pool from 2,
    // 0.7, and sep_conv_3x3 from 0, 0.6) also match. Make node 2's two best pairs read the
    // same input: DARTS keeps one gene per input, GDAS keeps both.
    let mut w2 = w.clone();
    w2[5][4] = 0.8; // node 2, state 0: sep_conv_3x3
    w2[5][6] = 0.7; // node 2, state 0: dil_conv_3x3
    w2[6][3] = 0.6; // node 2, state 1: skip
    let t2 = Tensor::from_slice(&w2.concat()).reshape([14, 8]);
    let gdas = Genotype::derive(&space, &t2, None, DeriveRule::Gdas).unwrap();
    assert_eq!(gdas.normal[0], g.normal[0]);
    assert_eq!(gdas.normal[1], g.normal[1]);
    assert_eq!(
        gdas.normal[2],
        vec![(OpKind::SepConv3x3, 0), (OpKind::DilConv3x3, 0)]
    );
    let darts = Genotype::derive(&space, &t2, None, DeriveRule::Darts).unwrap();
    assert_eq!(
        darts.normal[2],
        vec![(OpKind::SepConv3x3, 0), (OpKind::SkipConnect, 1)]
    );
    gdas.validate(2, false).unwrap();

    let all = Genotype::derive(&space, &t, None, DeriveRule::ArgmaxAll).unwrap();
    assert_eq!(
        all.normal[0],
        vec![(OpKind::None, 0), (OpKind::DilConv5x5, 1)]
    );
    assert_eq!(
        all.normal.iter().map(Vec::len).collect::<Vec<_>>(),
        [2, 3, 4, 5]
    );
    assert!(all.reduce.is_empty());
    // Not two genes per node: printed grouped, and read back.
    assert_eq!(all.to_darts_string().parse::<Genotype>().unwrap(), all);
}

#[test]
fn rl_darts_rule_keeps_node_zero_single_and_drops_zero() {
    let space = CellSpace::rl_darts(OpSet::RlDarts);
    // Columns: conv_3x3, relu, tanh, skip_connect, none; none dominates everywhere.
    let mut w = vec![vec![0.1f32, 0.2, 0.05, 0.15, 0.5]; 10];
    w[0] = vec![0.1, 0.05, 0.3, 0.05, 0.5];
    let t = Tensor::from_slice(&w.concat()).reshape([10, 5]);
    let g = Genotype::derive(&space, &t, Some(&t), DeriveRule::RlDarts).unwrap();
    assert_eq!(g.normal[0], vec![(OpKind::Tanh, 0)]);
    assert!(g.normal[1..].iter().all(|genes| genes.len() == 2));
    assert!(g.normal.iter().flatten().all(|(op, _)| *op != OpKind::None));
    assert_eq!(g.normal_concat, [1, 2, 3, 4]);
    g.validate(1, true).unwrap();
}

#[test]
fn derive_checks_shapes_and_nans() {
    let space = CellSpace::darts();
    let wrong = Tensor::zeros([10, 5], (Kind::Float, Device::Cpu));
    assert!(matches!(
        Genotype::derive(&space, &wrong, None, DeriveRule::Darts),
        Err(NasError::Shape(_))
    ));
    let nan = Tensor::full([14, 8], f64::NAN, (Kind::Float, Device::Cpu));
    assert!(matches!(
        Genotype::derive(&space, &nan, None, DeriveRule::Darts),
        Err(NasError::InvalidGenotype(_))
    ));
}

#[test]
fn validation_rejects_forward_references_and_bad_concat() {
    let mut g = DARTS_V2.to_genotype();
    g.normal[0][0].1 = 2; // node 0 = state 2 cannot read itself
    assert!(matches!(
        g.validate(2, true),
        Err(NasError::InvalidGenotype(_))
    ));
    let mut g = DARTS_V2.to_genotype();
    g.reduce_concat = vec![2, 6];
    assert!(g
        .validate(2, true)
        .unwrap_err()
        .to_string()
        .contains("state 6"));
    let mut g = DARTS_V2.to_genotype();
    g.reduce.clear();
    g.reduce_concat.clear();
    assert!(g.validate(2, true).is_err());
    g.validate(2, false).unwrap();
}

#[test]
fn nas_bench_201_strings_round_trip() {
    let text = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|";
    let g = Genotype::from_nas_bench_201_str(text).unwrap();
    assert_eq!(
        g.normal[2],
        vec![
            (OpKind::SkipConnect, 0),
            (OpKind::NorConv3x3, 1),
            (OpKind::SkipConnect, 2)
        ]
    );
    assert_eq!(g.normal_concat, [3]);
    assert_eq!(g.to_nas_bench_201_string(), text);
    assert!(Genotype::from_nas_bench_201_str("|nor_conv_3x3~1|").is_err());
    assert!(Genotype::from_nas_bench_201_str("|conv~0|").is_err());
}

#[test]
fn dot_output_describes_the_cell_and_renders() {
    let g = DARTS_V2.to_genotype();
    let dot = g.to_dot(CellType::Normal, 2);
    assert!(dot.starts_with("digraph normal {"));
    assert!(
        dot.contains("\"c_{k-2}\" -> \"0\" [label=\"sep_conv_3x3\""),
        "{dot}"
    );
    assert!(
        dot.contains("\"0\" -> \"3\" [label=\"dil_conv_3x3\""),
        "{dot}"
    );
    assert_eq!(dot.matches("-> \"c_{k}\"").count(), 4);
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("normal.svg");
    match render_dot(&dot, &svg) {
        Ok(()) => {
            let text = std::fs::read_to_string(&svg).unwrap();
            assert!(text.contains("<svg") && text.contains("dil_conv_3x3"));
        }
        // Machines without graphviz get the explanatory error instead.
        Err(e) => assert!(matches!(e, NasError::GraphvizMissing), "{e}"),
    }
    assert!(matches!(
        render_dot(&dot, &dir.path().join("x.bmp")),
        Err(NasError::Config(_))
    ));
    if svg.exists() {
        assert!(matches!(
            render_dot("digraph {", &dir.path().join("bad.png")),
            Err(NasError::Graphviz(_))
        ));
    }
}
