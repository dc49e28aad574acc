"""Stand-in ``tegrastats`` and ``vcgencmd`` for virtual boards: real output formats, modelled values.

The scripts are POSIX sh (+ awk for the PMIC's floats), so a board's shell runs them as it would
NVIDIA's and the Pi firmware's tools. They read the current power in mW from ``.powerfeed-mw`` next
to themselves, which :class:`farm.lab.powerfeed.PowerFeeder` keeps up to date. Formats are the
verbatim samples of shared/samples/real-tool-outputs.md with the power fields replaced.
"""

from __future__ import annotations

from pathlib import Path

# Orin Nano, JetPack 6 (R36.4.3); rails: VDD_IN, VDD_CPU_GPU_CV (35 %), VDD_SOC (30 %), in mW now/avg.
_ORIN = ("'%s RAM 2147/7620MB (lfb 2x4MB) SWAP 1476/3810MB (cached 1MB) CPU [0%%@729,0%%@729,0%%@729,"
         "0%%@729,0%%@729,0%%@729] GR3D_FREQ 0%% cpu@47.687C soc2@46.718C soc0@47.468C gpu@48.625C "
         "tj@48.625C soc1@48.25C VDD_IN %dmW/%dmW VDD_CPU_GPU_CV %dmW/%dmW VDD_SOC %dmW/%dmW\\n' "
         "\"$(date '+%m-%d-%Y %H:%M:%S')\" $mw $((s0/n)) $cpu $((s1/n)) $soc $((s2/n))")
# TX2, L4T 28.x: no date, numbers without unit (mW).
_TX2 = ("'RAM 1685/7854MB (lfb 1044x4MB) SWAP 278/8192MB (cached 23MB) CPU [0%%@1303,0%%@345,0%%@345,"
        "0%%@1419,0%%@1420,0%%@1421] EMC_FREQ 0%%@1866 GR3D_FREQ 0%%@140 APE 150 MTS fg 1%% bg 8%% BCPU@41C "
        "MCPU@41C GPU@39C PLL@41C Tboard@37C Tdiode@37.25C PMIC@100C thermal@39.9C VDD_IN %d/%d VDD_CPU %d/%d "
        "VDD_GPU 154/154 VDD_SOC %d/%d VDD_WIFI 38/38 VDD_DDR 326/326\\n' "
        "$mw $((s0/n)) $cpu $((s1/n)) $soc $((s2/n))")

_TEGRASTATS = """#!/bin/sh
# farm lab stand-in for NVIDIA tegrastats: the real line format, power from the lab's model
here=$(dirname "$0")
ms=1000
while [ $# -gt 0 ]; do
  case "$1" in --interval) ms=$2; shift 2 ;; *) shift ;; esac
done
sec=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
n=0; s0=0; s1=0; s2=0
trap 'exit 0' TERM INT PIPE
while :; do
  read -r mw < "$here/.powerfeed-mw"
  cpu=$((mw * 35 / 100)); soc=$((mw * 30 / 100))
  n=$((n + 1)); s0=$((s0 + mw)); s1=$((s1 + cpu)); s2=$((s2 + soc))
  printf FORMAT || exit 0
  sleep "$sec"
done
"""

# Pi 5 pmic_read_adc, verbatim order, names and (unaligned) indices; currents scaled to the model.
_PMIC = """ 3V7_WL_SW_A current(0)=0.09368929A
   3V3_SYS_A current(1)=0.08783370A
   1V8_SYS_A current(2)=0.18054710A
  DDR_VDD2_A current(3)=0.22543980A
  DDR_VDDQ_A current(4)=0.06666720A
   1V1_SYS_A current(5)=0.17566740A
    0V8_SW_A current(6)=0.37670900A
  VDD_CORE_A current(7)=6.22421000A
   3V3_DAC_A current(17)=0.00006105A
   3V3_ADC_A current(18)=0.00036630A
   0V8_AON_A current(16)=0.00305250A
      HDMI_A current(22)=0.02417580A
 3V7_WL_SW_V volt(8)=3.69977600V
   3V3_SYS_V volt(9)=3.31003300V
   1V8_SYS_V volt(10)=1.80512600V
  DDR_VDD2_V volt(11)=1.10476100V
  DDR_VDDQ_V volt(12)=0.60146460V
   1V1_SYS_V volt(13)=1.11025500V
    0V8_SW_V volt(14)=0.80146440V
  VDD_CORE_V volt(15)=0.86173300V
   3V3_DAC_V volt(20)=3.31318300V
   3V3_ADC_V volt(21)=3.30677300V
   0V8_AON_V volt(19)=0.80029220V
      HDMI_V volt(23)=5.08664000V
     EXT5V_V volt(24)=5.09066000V
      BATT_V volt(25)=0.00000000V
"""

_VCGENCMD = """#!/bin/sh
# farm lab stand-in for the Raspberry Pi vcgencmd: pmic_read_adc in the real format, model power
here=$(dirname "$0")
case "$1" in
  pmic_read_adc)
    read -r mw < "$here/.powerfeed-mw"
    awk -v mw="$mw" -v only="$2" '
      { line[NR] = $0; split($2, kv, "="); v = substr(kv[2], 1, length(kv[2]) - 1) + 0
        name = $1; rail = substr(name, 1, length(name) - 2); unit = substr(name, length(name))
        val[NR] = v; kind[NR] = unit; railof[NR] = rail; head[NR] = kv[1]
        if (unit == "A") amps[rail] = v; else volts[rail] = v }
      END {
        for (r in amps) if (r in volts) p0 += amps[r] * volts[r]
        scale = (mw / 1000.0) / p0
        for (i = 1; i <= NR; i++) {
          split(line[i], parts, " "); if (only != "" && parts[1] != only) continue
          if (kind[i] == "A") printf "%12s %s=%.8fA\\n", parts[1], head[i], val[i] * scale
          else printf "%12s %s=%.8fV\\n", parts[1], head[i], val[i]
        }
      }' "$here/.pmic-adc-template" ;;
  measure_temp) echo "temp=45.0'C" ;;
  get_throttled) echo "throttled=0x0" ;;
  *) echo "error=1 error_msg=\\"Command not registered\\""; exit 1 ;;
esac
"""


def install_tools(bin_dir: Path, tegrastats_format: str = "orin") -> Path:
    """Write the stand-ins into `bin_dir`; return the mW file they read."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    fmt = {"orin": _ORIN, "tx2": _TX2}[tegrastats_format]
    (bin_dir / ".pmic-adc-template").write_text(_PMIC)
    for name, text in (("tegrastats", _TEGRASTATS.replace("FORMAT", fmt)), ("vcgencmd", _VCGENCMD)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    return bin_dir / ".powerfeed-mw"
