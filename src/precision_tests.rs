use super::*;

const EPYC_NO_BF16: &str =
    "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n";
const EPYC_BF16: &str =
    "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n";
const XEON_AMX: &str = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n";

#[test]
fn cpu_flags_name_the_bf16_support() {
    assert_eq!(cpu_caps(EPYC_NO_BF16).bf16, None);
    assert_eq!(cpu_caps(EPYC_NO_BF16).description, "CPU AMD EPYC 7B12");
    assert!(cpu_caps(EPYC_BF16)
        .bf16
        .unwrap()
        .starts_with("AVX-512 BF16"));
    assert!(cpu_caps(XEON_AMX).bf16.unwrap().starts_with("AMX"));
    // A flag that merely contains the name does not count.
    let fake = "flags\t: avx512_bf16x\n";
    assert_eq!(cpu_caps(fake).bf16, None);
}

/// `auto` on a device without bf16 picks fp32 and never probes bf16: the probe here fails
/// the test if asked for it.
#[test]
fn auto_picks_fp32_without_bf16_support() {
    let caps = cpu_caps(EPYC_NO_BF16);
    let mut asked = Vec::new();
    let mut probe = |c: Compute| -> Result<f64, String> {
        assert_eq!(c.precision, Precision::Fp32, "bf16 probed without support");
        asked.push(c);
        Ok(1.0)
    };
    let policy = resolve(
        PrecisionChoice::Auto,
        LayoutChoice::Auto,
        &caps,
        Some(&mut probe),
    )
    .unwrap();
    assert_eq!(policy.precision, Precision::Fp32);
    // Equal times: the layout stays NCHW.
    assert_eq!(policy.layout, Layout::Nchw);
    assert!(
        policy.reason.contains("no native bf16"),
        "{}",
        policy.reason
    );
    // Two layouts, one warm-up and PROBE_REPEATS timed passes each.
    assert_eq!(asked.len(), 2 * (1 + PROBE_REPEATS));
    // Without a probe too.
    let policy = resolve(PrecisionChoice::Auto, LayoutChoice::Auto, &caps, None).unwrap();
    assert_eq!(
        (policy.precision, policy.layout),
        (Precision::Fp32, Layout::Nchw)
    );
}

/// The probe decides among the supported settings: the fastest wins when it beats fp32 /
/// NCHW by more than the margin, otherwise fp32 / NCHW stays.
#[test]
fn auto_takes_the_fastest_setting_beyond_the_noise_margin() {
    let caps = cpu_caps(EPYC_BF16);
    let run = |times: [f64; 4]| {
        let mut probe = |c: Compute| -> Result<f64, String> {
            let i = match (c.precision, c.layout) {
                (Precision::Fp32, Some(Layout::Nchw)) => 0,
                (Precision::Fp32, Some(Layout::ChannelsLast)) => 1,
                (Precision::Bf16, Some(Layout::Nchw)) => 2,
                _ => 3,
            };
            Ok(times[i])
        };
        resolve(
            PrecisionChoice::Auto,
            LayoutChoice::Auto,
            &caps,
            Some(&mut probe),
        )
        .unwrap()
    };
    let p = run([1.0, 0.95, 0.5, 0.4]);
    assert_eq!(
        (p.precision, p.layout),
        (Precision::Bf16, Layout::ChannelsLast)
    );
    // bf16 slower (as measured on the AMD EPYC without AMX): fp32; channels-last within
    // the margin: NCHW.
    let p = run([1.0, 0.95, 3.0, 2.5]);
    assert_eq!((p.precision, p.layout), (Precision::Fp32, Layout::Nchw));
    assert!(p.reason.contains("within 10%"), "{}", p.reason);
    let p = run([1.0, 0.6, 3.0, 2.5]);
    assert_eq!(
        (p.precision, p.layout),
        (Precision::Fp32, Layout::ChannelsLast)
    );
}

#[test]
fn explicit_settings_are_kept_and_fp16_needs_cuda() {
    let caps = cpu_caps(EPYC_NO_BF16);
    let mut never = |_: Compute| -> Result<f64, String> { panic!("no probe for explicit keys") };
    let p = resolve(
        PrecisionChoice::Bf16,
        LayoutChoice::ChannelsLast,
        &caps,
        Some(&mut never),
    )
    .unwrap();
    assert_eq!(
        (p.precision, p.layout),
        (Precision::Bf16, Layout::ChannelsLast)
    );
    let err = resolve(PrecisionChoice::Fp16, LayoutChoice::Nchw, &caps, None).unwrap_err();
    assert!(err.to_string().contains("CUDA only"), "{err}");
    let gpu = DeviceCaps {
        description: "CUDA device 0, compute capability 8.0".into(),
        is_cuda: true,
        bf16: Some("compute capability 8.0".into()),
    };
    let p = resolve(PrecisionChoice::Fp16, LayoutChoice::Nchw, &gpu, None).unwrap();
    assert_eq!(p.precision, Precision::Fp16);
    // Without a probe a bf16 GPU takes bf16 / channels-last.
    let p = resolve(PrecisionChoice::Auto, LayoutChoice::Auto, &gpu, None).unwrap();
    assert_eq!(
        (p.precision, p.layout),
        (Precision::Bf16, Layout::ChannelsLast)
    );
}

/// A resumed run reuses the recorded policy for `auto`, and an explicit other setting wins
/// (with a note on stderr) and is recorded.
#[test]
fn resume_reuses_the_recorded_policy() {
    let dir = tempfile::tempdir().unwrap();
    let recorded = ComputePolicy {
        precision: Precision::Bf16,
        layout: Layout::ChannelsLast,
        reason: "probe".into(),
    };
    recorded.save(dir.path()).unwrap();
    let p = policy_for_run(
        PrecisionChoice::Auto,
        LayoutChoice::Auto,
        Device::Cpu,
        dir.path(),
        true,
        true,
        None,
    )
    .unwrap();
    assert_eq!(p, recorded);
    let p = policy_for_run(
        PrecisionChoice::Fp32,
        LayoutChoice::Auto,
        Device::Cpu,
        dir.path(),
        true,
        true,
        None,
    )
    .unwrap();
    assert_eq!(
        (p.precision, p.layout),
        (Precision::Fp32, Layout::ChannelsLast)
    );
    assert!(p.reason.contains("started in bf16"), "{}", p.reason);
    assert_eq!(ComputePolicy::load(dir.path()).unwrap(), p);
}

#[test]
fn keys_parse_and_reject_typos() {
    #[derive(Debug, Deserialize)]
    struct Keys {
        precision: PrecisionChoice,
        layout: LayoutChoice,
    }
    let k: Keys = toml::from_str("precision = \"bf16\"\nlayout = \"channels_last\"").unwrap();
    assert_eq!(k.precision, PrecisionChoice::Bf16);
    assert_eq!(k.layout, LayoutChoice::ChannelsLast);
    assert!(toml::from_str::<Keys>("precision = \"bf61\"\nlayout = \"auto\"").is_err());
}
