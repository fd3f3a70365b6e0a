# Figure of experiments/nf4_vs_fp4.c, in the manner of QLoRA Figure 3: quality against the total bits a
# model is stored in, one line per 4-bit data type joining the models of the family (log x). Left:
# perplexity on the first benchmark (the family's held-out text by default); right: mean KL divergence
# from the fp32 model on the same tokens (log y). Solid lines and open markers: fp32 block constants;
# dashed lines and filled markers: double-quantized constants; black: the fp32 models.
if (!exists("scriptdir")) scriptdir = 'plots'
if (!exists("prefix")) prefix = 'nf4_vs_fp4'
if (!exists("width")) width = 1500
if (!exists("height")) height = 700
load scriptdir.'/common.gp'

f = datafile('figure3')
if (!file_exists(f)) { print 'nf4_vs_fp4.gp: no '.f; exit status 1 }
bench = system("awk '!/^#/ { gsub(/\"/, \"\", $1); print $1; exit }' '".f."'")
labels = system("awk -v b='".bench."' '!/^#/ { gsub(/\"/, \"\", $1); gsub(/\"/, \"\", $2); if ($1 == b && !seen[$2]++) printf \"%s \", $2 }' '".f."'")
nlabels = words(labels)
qlabels = ''
do for [i=1:nlabels] { if (word(labels, i) ne 'fp32') { qlabels = qlabels.word(labels, i).' ' } }
nq = words(qlabels)
nmodels = system("awk -v b='".bench."' '!/^#/ { gsub(/\"/, \"\", $1); gsub(/\"/, \"\", $4); if ($1 == b && !seen[$4]++) n++ } END { print n + 0 }' '".f."'") + 0
base(s) = strstrt(s, '+') > 0 ? s[1:strstrt(s, '+') - 1] : s
is_dq(s) = strstrt(s, '+dq') > 0
matches(label) = strcol(1) eq bench && strcol(2) eq label
color(s) = s eq 'fp32' ? '#111111' : type_color(base(s))
point(s) = s eq 'fp32' ? 5 : type_point(base(s)) + (is_dq(s) ? 1 : 0)
dash(s) = is_dq(s) ? 2 : 1

set logscale x
set format x '10^{%L}'
set xlabel 'total model bits (log scale)'
set key outside right top vertical Left reverse samplen 3 spacing 1.15 font ',11' noenhanced

set multiplot title sprintf("{/:Bold 4-bit data types across a family of %d models} (%s, block size 64)\n{/*0.85 fewer bits and lower perplexity/KL is better: lower-left wins. Solid = fp32 block constants, dashed = double quantization}", nmodels, bench) font ',15'
set tmargin at screen 0.83; set bmargin at screen 0.1
set lmargin at screen 0.06; set rmargin at screen 0.44
set title 'Perplexity' font ',13'
set ylabel 'perplexity (lower is better)'
unset logscale y
set format y '%g'
unset key
plot for [i=1:nlabels] f using (matches(word(labels, i)) ? $6 : NaN):7 with linespoints lw 2 \
     dt dash(word(labels, i)) pt point(word(labels, i)) ps 1.3 lc rgb color(word(labels, i)) title word(labels, i)

set lmargin at screen 0.52; set rmargin at screen 0.87
set title 'KL divergence from the fp32 model' font ',13'
set ylabel 'mean KL(p_{fp32} || p_{4-bit}) per token (nats, log scale)'
set logscale y
set format y '10^{%L}'
set key outside right top vertical Left reverse samplen 3 spacing 1.15 font ',11' noenhanced
plot for [i=1:nq] f using (matches(word(qlabels, i)) ? $6 : NaN):($8 > 0 ? $8 : NaN) \
     with linespoints lw 2 dt dash(word(qlabels, i)) pt point(word(qlabels, i)) ps 1.3 \
     lc rgb color(word(qlabels, i)) title word(qlabels, i), \
     keyentry with linespoints lw 2 pt 5 ps 1.3 lc rgb '#111111' title 'fp32 (left panel only)'
unset multiplot
