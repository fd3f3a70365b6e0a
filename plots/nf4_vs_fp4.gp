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

# the single-model bars (a macro: defined before the block that expands it)
bar = "with boxes lw 2 lc rgb color(word(qlabels, i)) fs solid (is_dq(word(qlabels, i)) ? 0.85 : 0.0) border"
if (nmodels == 1) {
    # One model (e.g. the SmolLM2 config): no family to join, so one bar per data type, in the table's
    # order, against the fp32 model's value (a dashed line). Open bars: fp32 block constants; filled bars:
    # double-quantized constants.
    model = system("awk -v b='".bench."' '!/^#/ { gsub(/\"/, \"\", $1); gsub(/\"/, \"\", $4); if ($1 == b) { print $4; exit } }' '".f."'")
    fp32ppl = system("awk -v b='".bench."' '!/^#/ { gsub(/\"/, \"\", $1); gsub(/\"/, \"\", $2); if ($1 == b && $2 == \"fp32\") { print $7; exit } }' '".f."'") + 0
    set xrange [0.3:nq + 0.7]
    set xtics rotate by 40 right noenhanced font ',11' scale 0
    set xtics ()
    do for [i=1:nq] { set xtics add (word(qlabels, i) i) }
    set boxwidth 0.72
    set key inside left top Left reverse samplen 4 font ',11' noenhanced
    set multiplot title sprintf("{/:Bold 4-bit data types on %s} (%s; block size 64 where the type has no fixed block)\n{/*0.85 lower is better; dashed line: the fp32 model. Open bars: fp32 block constants, filled bars: double quantization}", model, bench) font ',15'
    set tmargin at screen 0.83; set bmargin at screen 0.2
    set lmargin at screen 0.06; set rmargin at screen 0.48
    set title 'Perplexity' font ',13'
    set ylabel 'perplexity (lower is better)'
    set format y '%g'
    set yrange [0:*]
    plot for [i=1:nq] f using (matches(word(qlabels, i)) ? i : NaN):7 @bar notitle, \
         fp32ppl with lines dt 2 lw 2 lc rgb '#111111' title sprintf('fp32: %.2f', fp32ppl)
    set lmargin at screen 0.56; set rmargin at screen 0.98
    set title 'KL divergence from the fp32 model' font ',13'
    set ylabel 'mean KL(p_{fp32} || p_{4-bit}) per token (nats)'
    unset key
    plot for [i=1:nq] f using (matches(word(qlabels, i)) ? i : NaN):8 @bar notitle
    unset multiplot
    exit
}

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
