import re,sys,statistics as st
d={}
for l in open(sys.argv[1]):
    m=re.search(r'run 0 (\S+)\s+p50 ([\d.]+) p99 ([\d.]+).*from publish: p50 [\d.]+ p99 ([\d.]+).*pacing: p50 [\d.]+ p99 ([\d.]+)',l)
    if m: d.setdefault(m.group(1),[]).append(tuple(map(float,m.group(2,3,4,5))))
for k,v in d.items():
    print(k, len(v), "p99 med %.2f"%st.median(x[1] for x in v), "range %.2f-%.2f"%(min(x[1] for x in v),max(x[1] for x in v)), "fromPub med %.2f"%st.median(x[2] for x in v), "pacing p99 med %.2f"%st.median(x[3] for x in v))
h=[x[1] for x in d.get('herald-notifier',[])]; b=[x[1] for x in d.get('baseline-notifier',[])]; f=[x[1] for x in d.get('floor-notifier',[])]
if h and b: print("herald/baseline %.2f"%(st.median(h)/st.median(b)), "paired", sorted(round(x/y,2) for x,y in zip(h,b)))
if f and b: print("floor/baseline %.2f"%(st.median(f)/st.median(b)), "paired", sorted(round(x/y,2) for x,y in zip(f,b)))
