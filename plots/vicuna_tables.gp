# Figure of experiments/vicuna_tables.c: left, Elo of the 8 systems from GPT-4's pairwise verdicts (dot =
# mean over random match orderings, bar = middle 95% of orderings) with the paper's Table 1 values; right,
# Table 6's score as % of ChatGPT (dot = mean of both answer orders, bar = bootstrap 95% interval) with the
# paper's value and ± beside ours. Systems the paper leaves out are drawn in grey.
if (!exists("scriptdir")) scriptdir = 'plots'
if (!exists("prefix")) prefix = 'vicuna_tables'
width = 1700
height = 1050
load scriptdir.'/common.gp'

elo = datafile('elo')
t6 = datafile('table6')
if (!file_exists(elo) || !file_exists(t6)) { print 'vicuna_tables.gp: data files missing under '.datadir; exit status 1 }

ours = '#4e79a7'
paper_color = '#e15759'
extra = '#9a9a9a'
set datafile missing 'NaN'
set key noenhanced
unset grid
set grid xtics mxtics lw 0.8 lc rgb '#dddddd'

stats elo using 3 nooutput
n_elo = STATS_records
stats t6 using 5 nooutput
n_t6 = STATS_records

set multiplot title "{/:Bold Chatbot quality on the Vicuna benchmark, GPT-4 as judge: released ratings vs the QLoRA paper}" font ',16'

# ---------------------------------------------------------------- Elo (Tables 1/7)
set lmargin at screen 0.09
set rmargin at screen 0.42
set tmargin at screen 0.90
set bmargin at screen 0.50
set title 'Elo (start 1000, K = 32, 10,000 random match orderings)' font ',13'
set xlabel 'Elo rating'
set xrange [740:1500]
set xtics 100
set mxtics 2
set yrange [-n_elo + 0.4 : 0.6]
set ytics scale 0 font ',12'
set key bottom right box opaque samplen 2 spacing 1.3 font ',11'
plot elo using 3:(-$0):5:6:ytic(1) with xerrorbars pt 7 ps 1.6 lw 2 lc rgb ours \
         title 'ours: mean, bar = 95% of orderings', \
     elo using 9:(-$0 - 0.22) with points pt 9 ps 1.8 lc rgb paper_color title 'paper (Table 1)', \
     elo using 3:(-$0 + 0.3):(sprintf('%.0f', $3)) with labels font ',10' tc rgb ours notitle

# ---------------------------------------------------------------- Elo: what the ratings are made of
set lmargin at screen 0.09
set rmargin at screen 0.42
set tmargin at screen 0.40
set bmargin at screen 0.07
set title 'Pairwise verdicts behind the Elo (each system meets 7 others, 2 orders x 80 questions)' font ',13'
set xlabel 'share of verdicts (%)'
set xrange [0:100]
set xtics 20
set mxtics 2
set style data histograms
set style histogram rowstacked
set style fill solid 0.85 border rgb 'white'
set boxwidth 0.6
set key bottom right box opaque samplen 2 spacing 1.3 font ',11'
# Horizontal stacked bars drawn as boxxyerror: x from the start to the end of each segment.
tot(w, t, l) = w + t + l
plot elo using (50.0 * $12 / tot($12, $13, $14)):(-$0):(0):(100.0 * $12 / tot($12, $13, $14)):(-$0 - 0.3):(-$0 + 0.3):ytic(1) \
         with boxxyerror fs solid 0.85 lc rgb '#59a14f' title 'won', \
     elo using (100.0 * ($12 + $13 / 2) / tot($12, $13, $14)):(-$0):(100.0 * $12 / tot($12, $13, $14)):(100.0 * ($12 + $13) / tot($12, $13, $14)):(-$0 - 0.3):(-$0 + 0.3) \
         with boxxyerror fs solid 0.85 lc rgb '#bab0ac' title 'tie', \
     elo using (100.0 * ($12 + $13 + $14 / 2) / tot($12, $13, $14)):(-$0):(100.0 * ($12 + $13) / tot($12, $13, $14)):(100):(-$0 - 0.3):(-$0 + 0.3) \
         with boxxyerror fs solid 0.85 lc rgb '#f28e2b' title 'lost'

# ---------------------------------------------------------------- Table 6
set lmargin at screen 0.60
set rmargin at screen 0.98
set tmargin at screen 0.90
set bmargin at screen 0.07
set title 'Table 6: score as % of ChatGPT (mean of both answer orders)' font ',13'
set xlabel '% of ChatGPT''s score (100 = as good as ChatGPT)'
set xrange [20:125]
set xtics 10
set mxtics 2
set yrange [-n_t6 + 0.4 : 0.6]
set ytics scale 0 font ',11'
set arrow 1 from 100, graph 0 to 100, graph 1 nohead lw 1.5 dt 2 lc rgb '#555555' back
set key bottom right box opaque samplen 2 spacing 1.3 font ',11'
plot t6 using 5:(-$0):6:7:ytic(1) with xerrorbars pt 7 ps 1.2 lw 1.6 lc rgb ours \
         title 'ours: mean, bar = bootstrap 95% interval', \
     t6 using 9:(-$0 - 0.3):($9 - $10):($9 + $10) with xerrorbars pt 9 ps 1.3 lw 1.2 lc rgb paper_color \
         title 'paper: value ± its 95% CI', \
     t6 using ($9 == $9 ? NaN : $5):(-$0):6:7 with xerrorbars pt 7 ps 1.2 lw 1.6 lc rgb extra \
         title 'released ratings only (not in the paper)', \
     t6 using ($6 - 1.5):(-$0 - 0.1):(strcol(2) eq '30b-huggingchat' ? 'paper value = Vicuna 13B''s (copy error?)' : '') \
         with labels right font ',10' tc rgb paper_color notitle
unset arrow 1
unset multiplot
