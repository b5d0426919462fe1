import asyncio, sys, time
from websockets.asyncio.client import connect
BASE = sys.argv[1]; AGENT = sys.argv[2] if len(sys.argv) > 2 else "pyclient"
async def main():
    async with connect(f"{BASE}/getCaseCount") as ws:
        n = int(await ws.recv())
    print("case count", n)
    t=time.time()
    for i in range(1, n+1):
        try:
            async with connect(f"{BASE}/runCase?case={i}&agent={AGENT}", max_size=None, compression=None, ping_interval=None) as ws:
                async for msg in ws:
                    await ws.send(msg)
        except Exception as e:
            pass
    print("ran in", time.time()-t)
    async with connect(f"{BASE}/updateReports?agent={AGENT}") as ws:
        try:
            async for m in ws: print("upd msg", m)
        except Exception as e: print("upd exc", e)
asyncio.run(main())
