# bench/autoscale's chart. run.py calls:
#   gnuplot -e "csv='last-run.csv'; out='autoscale.png'; step=10; drop=40; title='...'" chart.gp
# Top: replicas (left axis) and the p95 latency of the requests sent in each
# second (right axis, log scale). Bottom: offered rate and queue length.
if (!exists("csv")) csv = 'bench/autoscale/last-run.csv'
if (!exists("out")) out = 'docs/img/autoscale.png'
if (!exists("step")) step = 10
if (!exists("drop")) drop = 40
if (!exists("title")) title = 'baton demand autoscaling'

set terminal pngcairo size 1000,700 font 'DejaVu Sans,10'
set output out
set datafile separator ','
set datafile missing ''
stats csv using 1 skip 1 nooutput
tmax = STATS_max

set multiplot
set lmargin 10
set rmargin 10
set xrange [0:tmax]
set grid xtics ytics lc rgb '#dddddd'
set arrow 1 from step, graph 0 to step, graph 1 nohead dt 2 lc rgb '#888888'
set arrow 2 from drop, graph 0 to drop, graph 1 nohead dt 2 lc rgb '#888888'

# Top panel.
set origin 0, 0.33
set size 1, 0.67
set title title
set format x ''
set ylabel 'replicas (scaling.active)'
set yrange [0:9]
set ytics 1 nomirror
set y2label 'p95 latency, 1 s windows by send time (ms)'
set logscale y2
set y2range [10:*]
set y2tics nomirror
set key top right box opaque
plot csv using 1:2 skip 1 with steps lw 2.5 lc rgb '#1f5fbf' title 'replicas', \
     '' using 1:5 skip 1 axes x1y2 with steps lw 1.5 lc rgb '#d62728' title 'p95 latency (ms)'

# Bottom panel.
unset title
unset logscale y2
set origin 0, 0
set size 1, 0.35
set format x '%g'
set xlabel 'time (s)'
set ylabel 'offered (req/s)'
set yrange [0:140]
set ytics 40 nomirror
set y2label 'queued'
set y2range [0:*]
set y2tics autofreq nomirror
plot csv using 1:6 skip 1 with steps lw 2 lc rgb '#2ca02c' title 'offered rate (req/s)', \
     '' using 1:3 skip 1 axes x1y2 with lines lw 1.2 lc rgb '#9467bd' title 'queued'
unset multiplot
