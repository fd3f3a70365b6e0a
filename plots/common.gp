# Shared style of qlab's figures. `qlab report` runs each plots/<experiment>.gp with
#   datadir='...' prefix='<experiment>' out='<file>' fmt='png'|'svg' scriptdir='plots'
# and the script loads this file first; the table <t> of the results is datadir.'/'.prefix.'.<t>.dat'.

if (!exists("fmt")) fmt = 'png'
if (!exists("out")) out = prefix.'.'.fmt
if (!exists("datadir")) datadir = 'plots'
if (!exists("width")) width = 1500
if (!exists("height")) height = 600

if (fmt eq 'svg') {
    set terminal svg size width, height dynamic enhanced font 'Helvetica,13' background rgb 'white'
} else {
    # pngcairo draws anti-aliased lines and real fonts; the libgd png terminal is the fallback.
    if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {
        set terminal pngcairo size width, height enhanced font 'Helvetica,13' background rgb 'white'
    } else {
        set terminal png size width, height enhanced font 'Helvetica,12' background rgb 'white'
    }
}
set output out

datafile(table) = datadir.'/'.prefix.'.'.table.'.dat'
file_exists(f) = system('test -r '."'".f."'".' && echo 1 || echo 0') + 0

set datafile missing 'NaN'
set border 3 lw 1.2 lc rgb '#444444'
set tics nomirror out scale 0.7 textcolor rgb '#333333'
set grid xtics ytics mxtics lw 0.8 lc rgb '#dddddd' dt 1
set style line 100 lc rgb '#222222' lw 1.5

# One colour and marker per 4-bit data type, the same in every figure (Tableau 10 colours; marker
# shapes too, so the figure survives grey-scale printing and colour blindness). Open marker = pt, filled
# = pt + 1. They live in the data types' descriptor table (core/quant/quant_types.c): `qlab report` passes
# all_types, type_colors and type_points on gnuplot's command line; `qlab dtypes --gnuplot` prints them.
if (!exists("all_types") || !exists("type_colors") || !exists("type_points")) {
    print "plots/common.gp: the data type styles are not set: run the figure through 'qlab report', or pass"
    print "  gnuplot -e \"$(qlab dtypes --gnuplot | tail -n 1); datadir=...; prefix=...\""
    exit status 1
}
type_index(t) = sum [k=1:words(all_types)] (word(all_types, k) eq t ? k : 0)
type_color(t) = type_index(t) > 0 ? word(type_colors, type_index(t)) : '#000000'
type_point(t) = type_index(t) > 0 ? word(type_points, type_index(t)) + 0 : 1
