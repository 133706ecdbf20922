# gnuplot -e "datadir='DIR'" bench/plot.gp: DIR/plot.png from DIR/latency.dat and
# DIR/throughput.dat (written by bench/bench.py).
set terminal pngcairo size 1400,600 font ",10" noenhanced
set output datadir."/plot.png"
set multiplot layout 1,2
set title "Per-thumbnail latency, ms: mean of per-file medians (log scale)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set logscale y
set yrange [1:*]
set xtics rotate by -30 left font ",8"
set key top left
set grid ytics
set key autotitle columnhead
plot datadir."/latency.dat" using 2:xtic(1), '' using 3
unset logscale y
set yrange [0:*]
set style data linespoints
set title "Throughput through thumbnail_client, thumbnails/s"
set xlabel "workers"
set xtics norotate font ",10"
set xtics 1
stats datadir."/throughput.dat" every ::1 using 1 nooutput
ncol = STATS_columns
plot for [i=2:ncol] datadir."/throughput.dat" using 1:i
unset multiplot
