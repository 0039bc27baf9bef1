'use client';

import { useEffect, useState } from 'react';

export default function Home() {
  const [count, setCount] = useState(0);
  const [last, setLast] = useState('waiting…');

  useEffect(() => {
    const source = new EventSource('/api/stream');
    source.onmessage = (event) => {
      const data = JSON.parse(event.data);
      setCount((c) => c + 1);
      setLast(`id ${event.lastEventId}, lag ${Date.now() - data.ts} ms`);
    };
    return () => source.close();
  }, []);

  return (
    <main>
      <h1>SSE through nginx (Next.js)</h1>
      <p>
        events: <b>{count}</b>
      </p>
      <pre>{last}</pre>
    </main>
  );
}
