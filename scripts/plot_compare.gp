# scripts/plot_compare.gp: gqa-compare's plot of one configuration (gnuplot 5; Debian gnuplot-nox).
# gqa-compare embeds this file, writes it next to its outputs and runs, in the output folder,
#   gnuplot -e "datafile='<name>.dat'; outfile='<name>.png'; plottitle='...'" plot_compare.gp
# Input: tab-separated rows "index scheme median_ms min_ms max_ms kv_bytes_per_token speedup_vs_mha"
# (NaN where a scheme has no time). Output: a PNG with two panels over the schemes: the time per call
# (median bar, min-max whisker, speed-up over MHA on top) and the KV-cache bytes per token per layer.

if (!exists("datafile")) datafile = "compare.dat"
if (!exists("outfile")) outfile = "compare.png"
if (!exists("plottitle")) plottitle = "gqa-compare"

# pngcairo (antialiased) when this gnuplot has it, else the libgd png terminal.
if (strstrt(GPVAL_TERMINALS, "pngcairo") > 0) {
  set terminal pngcairo size 1280,960 noenhanced font "sans,10"
} else {
  set terminal png size 1280,960 noenhanced
}
set output outfile

set datafile separator "\t"
set datafile missing "NaN"
set style fill solid 0.85 border -1
set boxwidth 0.7
set grid ytics lc rgb "#dddddd"
set xtics rotate by -40 left nomirror
set ytics nomirror
stats datafile using 1 nooutput
set xrange [-0.6:STATS_max + 0.6]
set key off
set tmargin 3

set multiplot layout 2,1 title plottitle font ",12"

set title "time per gqa::forward call (bar: median, whisker: min-max; label: speed-up over MHA)"
set ylabel "ms"
set yrange [0:*]
set offsets 0, 0, graph 0.12, 0
plot datafile using 1:3:xtic(2) with boxes lc rgb "#4477aa", \
     "" using 1:4:(0):($5 - $4) with vectors nohead lw 1.5 lc rgb "#222222", \
     "" using 1:5:(sprintf("%.2fx", $7)) with labels center offset 0,0.9 font ",9"

set title "KV cache per token per layer (fp32)"
set ylabel "KiB"
plot datafile using 1:($6/1024.0):xtic(2) with boxes lc rgb "#cc6677", \
     "" using 1:($6/1024.0):(sprintf("%g", $6/1024.0)) with labels center offset 0,0.8 font ",9"

unset multiplot
