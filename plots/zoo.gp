# Figure of experiments/zoo.c: the training curves of the embedded model family. Training loss (thin line,
# mean over each log interval) and held-out loss (thick line with markers) against training tokens seen
# (log x), one colour per model; the final held-out loss of each model is labelled.
if (!exists("scriptdir")) scriptdir = 'plots'
if (!exists("prefix")) prefix = 'zoo'
if (!exists("width")) width = 1200
if (!exists("height")) height = 700
load scriptdir.'/common.gp'

ftrain = datafile('train_curve')
fheld = datafile('heldout_curve')
if (!file_exists(ftrain) || !file_exists(fheld)) { print 'zoo.gp: missing curve data under '.datadir; exit status 1 }
models = system("awk '!/^#/ { gsub(/\"/, \"\", $1); if (!seen[$1]++) printf \"%s \", $1 }' '".ftrain."'")
nmodels = words(models)
params = system("awk '!/^#/ { gsub(/\"/, \"\", $1); if (!seen[$1]++) printf \"%s \", $2 }' '".ftrain."'")
colors = '#4e79a7 #f28e2b #59a14f #e15759 #b07aa1 #76b7b2 #edc948 #9c755f'
is_model(m) = strcol(1) eq m

set logscale x
set format x '10^{%L}'
set xlabel 'training tokens seen (log scale)'
set ylabel 'cross-entropy loss (nats/token, log scale)'
set logscale y
set format y '%g'
set ytics (0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 4, 6)
set title sprintf("{/:Bold The embedded model family: pretraining curves}\n{/*0.85 %d LLaMA models on qlab's generated stories (BPE vocabulary 512); AdamW, warmup + cosine decay, gradient clipping}", nmodels) font ',15'
set key top right Left reverse samplen 3 spacing 1.2 font ',11' noenhanced

plot for [i=1:nmodels] ftrain using (is_model(word(models, i)) && $4 > 0 ? $4 : NaN):5 with lines lw 1 \
         lc rgb word(colors, (i - 1) % 8 + 1) notitle, \
     for [i=1:nmodels] fheld using (is_model(word(models, i)) && $4 > 0 ? $4 : NaN):5 with linespoints lw 2.5 \
         pt 7 ps 0.9 lc rgb word(colors, (i - 1) % 8 + 1) \
         title sprintf('%s (%.2fM params): held-out', word(models, i), word(params, i) / 1e6), \
     keyentry with lines lw 1 lc rgb '#555555' title 'thin: training loss (batch mean)'
